import pino from 'pino';

export type Logger = pino.Logger;

/** Structured logger: JSON to stderr by default; LOG_LEVEL and LOG_PRETTY=1 adjust it. */
export function makeLogger(name: string, level?: string): Logger {
  level = process.env.LOG_LEVEL ?? level ?? 'info';
  if (process.env.LOG_PRETTY === '1') {
    return pino({ name, level, transport: { target: 'pino-pretty', options: { destination: 2 } } });
  }
  return pino({ name, level }, pino.destination(2));
}

export const silentLogger = (): Logger => pino({ level: 'silent' });
