// The fault proxy's vocabulary: its modes, the script of timed steps, and the loopback-only
// endpoints it accepts. Pure parsing; the sockets are in fault-connection.ts and fault-proxy.ts.
//
// Modes (library: FaultProxy.setMode / reset / runScript):
//   pass              forward as is
//   delay N           every chunk is held N ms before it is forwarded (both directions, order kept)
//   stall             stop forwarding, keep sockets open; bytes are buffered up to the bound, then
//                     the senders are paused; closes are held too. Leaving stall resumes everything.
//   drop [bytes|chunks]  silently discard every byte in both directions. `bytes` (default) also
//                     cuts the first and the last chunk of the window at a random offset, so the
//                     stream resumes mid-frame: a corrupting middlebox. `chunks` drops whole chunks.
//   reset [D]         destroy every connection with RST (socket.resetAndDestroy()); with a
//                     duration, connections accepted meanwhile are reset too (refused).
//   halfopen          every open connection becomes a black hole for good: nothing forwarded,
//                     nothing read, a close on one side is never passed to the other. Connections
//                     accepted while in this mode are black holes too. Leaving the mode only
//                     affects new connections: peers must find the dead ones by heartbeat.

export type FaultMode =
  | { kind: 'pass' }
  | { kind: 'delay'; ms: number }
  | { kind: 'stall' }
  | { kind: 'drop'; align: 'bytes' | 'chunks' }
  | { kind: 'reset' }
  | { kind: 'halfopen' };

export interface Endpoint {
  host: string;
  port: number;
}

export interface FaultStep {
  mode: FaultMode;
  ms?: number;
  text: string;
}

const LOOPBACK = /^(127\.\d{1,3}\.\d{1,3}\.\d{1,3}|::1|localhost)$/;

export function assertLoopback(e: Endpoint, what: string): void {
  if (!LOOPBACK.test(e.host))
    throw new Error(`${what}: ${e.host} is not a loopback address; the fault proxy is for loopback tests only`);
}

export function parseEndpoint(v: string, what: string): Endpoint {
  const m = /^(\[[0-9a-fA-F:.]+\]|[^:\s]+):(\d{1,5})$/.exec(v);
  if (!m || Number(m[2]) > 65535) throw new Error(`${what}: expected HOST:PORT, got "${v}"`);
  const e = { host: m[1].replace(/^\[|\]$/g, ''), port: Number(m[2]) };
  assertLoopback(e, what);
  return e;
}

/** "200ms", "2s", "1.5s", "1m", "300" (ms). */
export function parseDuration(t: string): number | undefined {
  const m = /^(\d+(?:\.\d+)?)(ms|s|m)?$/.exec(t);
  if (!m) return undefined;
  const n = Number(m[1]);
  return Math.round(m[2] === 's' ? n * 1000 : m[2] === 'm' ? n * 60_000 : n);
}

/** "pass 2s, delay 200ms 2s, stall 5s, reset, drop 1s, halfopen 10s, pass" */
export function parseScript(script: string): FaultStep[] {
  const steps: FaultStep[] = [];
  for (const raw of script.split(/[,;\n]/)) {
    const text = raw.trim();
    if (!text) continue;
    const [word, ...rest] = text.split(/\s+/);
    const times: number[] = [];
    const words: string[] = [];
    for (const r of rest) {
      const d = parseDuration(r);
      if (d === undefined) words.push(r.toLowerCase());
      else times.push(d);
    }
    const bad = () => new Error(`fault script: cannot parse step "${text}"`);
    let mode: FaultMode, ms: number | undefined;
    switch (word.toLowerCase()) {
      case 'pass':
        mode = { kind: 'pass' };
        ms = times[0];
        if (words.length || times.length > 1) throw bad();
        break;
      case 'stall':
        mode = { kind: 'stall' };
        ms = times[0];
        if (words.length || times.length > 1) throw bad();
        break;
      case 'halfopen':
      case 'half-open':
        mode = { kind: 'halfopen' };
        ms = times[0];
        if (words.length || times.length > 1) throw bad();
        break;
      case 'reset':
        mode = { kind: 'reset' };
        ms = times[0];
        if (words.length || times.length > 1) throw bad();
        break;
      case 'delay':
        if (times.length < 1 || times.length > 2 || words.length) throw bad();
        mode = { kind: 'delay', ms: times[0] };
        ms = times[1];
        break;
      case 'drop': {
        const align = words[0] ?? 'bytes';
        if ((align !== 'bytes' && align !== 'chunks') || words.length > 1 || times.length > 1) throw bad();
        mode = { kind: 'drop', align };
        ms = times[0];
        break;
      }
      default:
        throw bad();
    }
    steps.push({ mode, ms, text });
  }
  return steps;
}

export function describeMode(m: FaultMode): string {
  switch (m.kind) {
    case 'delay':
      return `delay ${m.ms}ms`;
    case 'drop':
      return `drop ${m.align}`;
    default:
      return m.kind;
  }
}
