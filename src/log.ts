import pino from 'pino';

export type Logger = pino.Logger;

export const LOG_LEVELS = ['trace', 'debug', 'info', 'warn', 'error', 'fatal', 'silent'];

/**
 * Structured logger: JSON to stderr by default; LOG_PRETTY=1 makes it human-readable. The level:
 * `level` (--log-level, or log-level in the config file) wins; LOG_LEVEL only stands in for it.
 */
export function makeLogger(name: string, level?: string): Logger {
  level = level ?? process.env.LOG_LEVEL ?? 'info';
  if (process.env.LOG_PRETTY === '1') {
    return pino({ name, level, transport: { target: 'pino-pretty', options: { destination: 2 } } });
  }
  return pino({ name, level }, pino.destination(2));
}

/** A finding for a log level that is not one (`label` names the flag or the key and file), else null. */
export function checkLogLevel(level: string | undefined, label: string): string | null {
  if (level === undefined || LOG_LEVELS.includes(level)) return null;
  return `${label} ${level}: one of ${LOG_LEVELS.join(', ')}`;
}

const SILENT = pino({ level: 'silent' });
/** A logger that writes nothing (tests, tools): a child of one for the process (each pino opens a destination). */
export const silentLogger = (): Logger => SILENT.child({});
