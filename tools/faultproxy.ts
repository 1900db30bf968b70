#!/usr/bin/env node
// A fault-injecting TCP proxy for loopback tests: sits between an agent and the hub and, with
// modes switched at run time, passes, delays, stalls, drops bytes, resets connections or turns
// them half-open. Every buffer is bounded: a pipe holds at most maxBufferBytes, beyond that the
// source socket is paused (TCP backpressure reaches the sender, as on a congested link).
//
//   node dist/tools/faultproxy.js --listen 127.0.0.1:7001 --target 127.0.0.1:7000 \
//     --script "pass 2s, delay 200ms 2s, stall 5s, reset, drop 1s, halfopen 10s, pass" [--loop]
//   (lines on stdin are steps too, run at once: "stall", "pass", "delay 50ms", "reset" ...)
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
import * as net from 'node:net';
import { EventEmitter } from 'node:events';
import { mulberry32 } from './prng';

export type FaultMode =
  | { kind: 'pass' }
  | { kind: 'delay'; ms: number }
  | { kind: 'stall' }
  | { kind: 'drop'; align: 'bytes' | 'chunks' }
  | { kind: 'reset' }
  | { kind: 'halfopen' };

export interface Endpoint { host: string; port: number }

export interface FaultProxyOptions {
  listen?: Endpoint; // default 127.0.0.1:0 (an ephemeral port)
  target: Endpoint;
  maxBufferBytes?: number; // per direction per connection, default 4 MiB
  maxConnections?: number; // open + black-holed connections; beyond, new ones are reset (default 128)
  seed?: number; // drop offsets
  log?: (line: string) => void;
}

export interface FaultStep { mode: FaultMode; ms?: number; text: string }

export interface FaultStats {
  accepted: number;
  active: number;
  blackholed: number; // connections currently half-open (held, never forwarded)
  bytesUp: number; // client -> target forwarded
  bytesDown: number; // target -> client forwarded
  bytesDropped: number;
  resets: number; // sockets reset
  injected: number; // fault steps applied (every mode other than pass, and every reset action)
  byKind: Record<string, number>;
}

const LOOPBACK = /^(127\.\d{1,3}\.\d{1,3}\.\d{1,3}|::1|localhost)$/;

export function assertLoopback(e: Endpoint, what: string): void {
  if (!LOOPBACK.test(e.host)) throw new Error(`${what}: ${e.host} is not a loopback address; the fault proxy is for loopback tests only`);
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
      case 'pass': mode = { kind: 'pass' }; ms = times[0]; if (words.length || times.length > 1) throw bad(); break;
      case 'stall': mode = { kind: 'stall' }; ms = times[0]; if (words.length || times.length > 1) throw bad(); break;
      case 'halfopen': case 'half-open': mode = { kind: 'halfopen' }; ms = times[0]; if (words.length || times.length > 1) throw bad(); break;
      case 'reset': mode = { kind: 'reset' }; ms = times[0]; if (words.length || times.length > 1) throw bad(); break;
      case 'delay':
        if (times.length < 1 || times.length > 2 || words.length) throw bad();
        mode = { kind: 'delay', ms: times[0] }; ms = times[1]; break;
      case 'drop': {
        const align = words[0] ?? 'bytes';
        if ((align !== 'bytes' && align !== 'chunks') || words.length > 1 || times.length > 1) throw bad();
        mode = { kind: 'drop', align }; ms = times[0]; break;
      }
      default: throw bad();
    }
    steps.push({ mode, ms, text });
  }
  return steps;
}

export function describeMode(m: FaultMode): string {
  switch (m.kind) {
    case 'delay': return `delay ${m.ms}ms`;
    case 'drop': return `drop ${m.align}`;
    default: return m.kind;
  }
}



interface Item { buf: Buffer; at: number }

/** One direction of one connection. */
class Pipe {
  private q: Item[] = [];
  private qHead = 0;
  qBytes = 0;
  private srcPaused = false;
  private waitingDrain = false;
  private timer: NodeJS.Timeout | null = null;
  eof = false; // the source is finished: end the destination once the queue is out
  private ended = false;
  dropping: 'bytes' | 'chunks' | null = null; // the drop window this pipe is in, if any

  constructor(readonly conn: Conn, readonly src: net.Socket, readonly dst: net.Socket, readonly up: boolean) {}

  get p(): FaultProxy { return this.conn.proxy; }

  onData(chunk: Buffer): void {
    const p = this.p;
    if (this.conn.dead || this.conn.gone) { p.stats.bytesDropped += chunk.length; return; }
    const mode = p.mode;
    if (mode.kind === 'drop') {
      if (this.dropping === null) {
        this.dropping = mode.align;
        if (mode.align === 'bytes' && chunk.length > 1) {
          // The window opens inside this chunk: its head still goes through.
          const k = 1 + Math.floor(p.rand() * (chunk.length - 1));
          p.stats.bytesDropped += chunk.length - k;
          this.enqueue(chunk.subarray(0, k), 0);
          return;
        }
      }
      p.stats.bytesDropped += chunk.length;
      return;
    }
    if (this.dropping !== null) {
      const align = this.dropping;
      this.dropping = null;
      if (align === 'bytes' && chunk.length > 1) {
        // The window closes inside this chunk: only its tail goes through.
        const k = 1 + Math.floor(p.rand() * (chunk.length - 1));
        p.stats.bytesDropped += k;
        chunk = chunk.subarray(k);
      }
    }
    if (mode.kind === 'reset') { p.stats.bytesDropped += chunk.length; return; } // about to be reset
    this.enqueue(chunk, mode.kind === 'delay' ? mode.ms : 0);
  }

  private enqueue(buf: Buffer, delayMs: number): void {
    this.q.push({ buf, at: Date.now() + delayMs });
    this.qBytes += buf.length;
    if (!this.srcPaused && this.qBytes >= this.p.maxBuffer) {
      this.srcPaused = true;
      this.src.pause();
    }
    this.pump();
  }

  pump(): void {
    if (this.conn.dead || this.conn.gone || this.ended) return;
    if (this.p.mode.kind === 'stall' || !this.conn.targetUp || this.waitingDrain) return;
    while (this.qHead < this.q.length) {
      const it = this.q[this.qHead];
      const wait = it.at - Date.now();
      if (wait > 0) {
        if (!this.timer) this.timer = setTimeout(() => { this.timer = null; this.pump(); }, wait);
        break;
      }
      this.qHead++;
      this.qBytes -= it.buf.length;
      if (this.up) this.p.stats.bytesUp += it.buf.length;
      else this.p.stats.bytesDown += it.buf.length;
      const ok = this.dst.write(it.buf);
      if (!ok) {
        this.waitingDrain = true;
        this.dst.once('drain', () => { this.waitingDrain = false; this.pump(); });
        break;
      }
    }
    if (this.qHead > 1024 || this.qHead === this.q.length) { this.q = this.q.slice(this.qHead); this.qHead = 0; }
    if (this.srcPaused && !this.waitingDrain && this.qBytes <= this.p.maxBuffer / 2) {
      this.srcPaused = false;
      if (!this.conn.dead) this.src.resume();
    }
    if (this.eof && this.q.length === 0 && !this.waitingDrain) {
      this.ended = true;
      this.dst.end();
      this.conn.checkDone();
    }
  }

  /** Forget everything held (black hole, reset, close). */
  discard(): void {
    if (this.timer) clearTimeout(this.timer);
    this.timer = null;
    this.p.stats.bytesDropped += this.qBytes;
    this.q = [];
    this.qHead = 0;
    this.qBytes = 0;
  }

  get done(): boolean { return this.ended; }
}

class Conn {
  readonly up: Pipe;
  readonly down: Pipe;
  targetUp = false;
  dead = false; // half-open: a black hole for good
  gone = false; // torn down
  private connecting = false;

  constructor(readonly proxy: FaultProxy, readonly id: number, readonly client: net.Socket, readonly server: net.Socket) {
    this.up = new Pipe(this, client, server, true);
    this.down = new Pipe(this, server, client, false);
    for (const s of [client, server]) {
      s.setNoDelay(true);
      s.on('error', () => undefined); // 'close' follows with hadError
    }
    client.on('data', (c) => this.up.onData(c));
    server.on('data', (c) => this.down.onData(c));
    client.on('end', () => this.onEnd(this.up));
    server.on('end', () => this.onEnd(this.down));
    client.on('close', (hadError) => this.onClose(client, hadError));
    server.on('close', (hadError) => this.onClose(server, hadError));
    server.on('connect', () => {
      this.targetUp = true;
      this.up.pump();
      this.down.pump();
    });
  }

  /** Connect to the target now, unless the link is stalled (then when it resumes). */
  maybeConnect(): void {
    if (this.connecting || this.dead || this.gone || this.proxy.mode.kind === 'stall') return;
    if (this.client.destroyed) { this.teardown(false); return; } // gave up while the link was stalled
    this.connecting = true;
    this.server.connect(this.proxy.target.port, this.proxy.target.host);
  }

  private onEnd(p: Pipe): void {
    if (this.dead || this.gone) return;
    p.eof = true;
    p.pump();
  }

  private onClose(s: net.Socket, hadError: boolean): void {
    if (this.dead || this.gone) return; // half-open: the other side never learns of it
    const other = s === this.client ? this.server : this.client;
    const from = s === this.client ? this.up : this.down;
    const to = s === this.client ? this.down : this.up;
    to.discard(); // nobody to deliver to any more
    if (this.proxy.mode.kind === 'stall') { this.proxy.deferClose(this); from.eof = true; return; }
    if (hadError) { this.teardown(true); return; } // pass the RST on
    from.eof = true;
    from.pump();
    if (!this.targetUp && other === this.server) { this.teardown(false); return; }
    this.checkDone();
  }

  checkDone(): void {
    const cGone = this.client.destroyed, sGone = this.server.destroyed || !this.targetUp;
    if ((this.up.done || cGone) && (this.down.done || sGone) && (cGone || sGone || (this.up.done && this.down.done))) this.teardown(false);
  }

  /** After a stall: what was held goes out, closes held meanwhile take effect. */
  resume(): void {
    if (this.dead || this.gone) return;
    if (!this.targetUp) { this.maybeConnect(); return; }
    this.up.pump();
    this.down.pump();
    if (this.client.destroyed || this.server.destroyed) {
      const gone = this.client.destroyed ? this.client : this.server;
      this.onClose(gone, false);
    }
  }

  blackhole(): void {
    if (this.dead || this.gone) return;
    this.dead = true;
    this.client.pause();
    this.server.pause();
    this.up.discard();
    this.down.discard();
  }

  teardown(rst: boolean): void {
    if (this.gone) return;
    this.gone = true;
    this.up.discard();
    this.down.discard();
    for (const s of [this.client, this.server]) {
      if (s.destroyed) continue;
      if (rst && (s !== this.server || this.targetUp)) { s.resetAndDestroy(); this.proxy.stats.resets++; }
      else s.destroy();
    }
    this.proxy.forget(this);
  }
}

export class FaultProxy extends EventEmitter {
  readonly target: Endpoint;
  private readonly listenAt: Endpoint;
  readonly maxBuffer: number;
  private readonly maxConns: number;
  private server?: net.Server;
  private readonly conns = new Set<Conn>();
  private readonly deferred = new Set<Conn>();
  private nextId = 1;
  private modeNow: FaultMode = { kind: 'pass' };
  private modeSince = Date.now();
  readonly rand: () => number;
  private readonly logf: (line: string) => void;
  private scriptGen = 0;
  private resetTimer: NodeJS.Timeout | null = null;
  port = 0;
  readonly stats: FaultStats = { accepted: 0, active: 0, blackholed: 0, bytesUp: 0, bytesDown: 0, bytesDropped: 0, resets: 0, injected: 0, byKind: {} };
  /** Every step applied, with its time: for test reports. */
  readonly history: { at: number; step: string }[] = [];

  constructor(o: FaultProxyOptions) {
    super();
    this.target = o.target;
    this.listenAt = o.listen ?? { host: '127.0.0.1', port: 0 };
    assertLoopback(this.target, 'target');
    assertLoopback(this.listenAt, 'listen');
    this.maxBuffer = o.maxBufferBytes ?? 4 << 20;
    this.maxConns = o.maxConnections ?? 128;
    this.rand = mulberry32(o.seed ?? Date.now());
    this.logf = o.log ?? (() => undefined);
  }

  get mode(): FaultMode { return this.modeNow; }

  async listen(): Promise<number> {
    this.server = net.createServer({ allowHalfOpen: true, pauseOnConnect: false }, (c) => this.accept(c));
    await new Promise<void>((res, rej) => {
      this.server!.once('error', rej);
      this.server!.listen(this.listenAt.port, this.listenAt.host, () => res());
    });
    this.port = (this.server.address() as net.AddressInfo).port;
    return this.port;
  }

  private accept(c: net.Socket): void {
    this.stats.accepted++;
    if (this.modeNow.kind === 'reset' || this.conns.size >= this.maxConns) {
      if (this.conns.size >= this.maxConns) this.logf(`faultproxy: ${this.conns.size} connections, limit reached; new one reset`);
      c.on('error', () => undefined);
      c.resetAndDestroy();
      this.stats.resets++;
      return;
    }
    const s = new net.Socket({ allowHalfOpen: true });
    const conn = new Conn(this, this.nextId++, c, s);
    this.conns.add(conn);
    this.stats.active = this.conns.size;
    if (this.modeNow.kind === 'halfopen') { conn.blackhole(); this.countBlackholed(); return; }
    conn.maybeConnect();
  }

  deferClose(c: Conn): void { this.deferred.add(c); }

  forget(c: Conn): void {
    this.conns.delete(c);
    this.deferred.delete(c);
    this.stats.active = this.conns.size;
    this.countBlackholed();
  }

  private countBlackholed(): void {
    let n = 0;
    for (const c of this.conns) if (c.dead) n++;
    this.stats.blackholed = n;
  }

  /**
   * Switch mode now (cancels a running script). A string is parsed as one script step (its
   * duration is ignored). Mode reset stays until the next switch: every connection is reset and
   * new ones are refused; for a one-off reset use reset().
   */
  setMode(m: FaultMode | string): void {
    this.scriptGen++;
    this.apply(typeof m === 'string' ? parseScript(m)[0].mode : m);
  }

  private apply(mode: FaultMode): void {
    const prev = this.modeNow;
    if (this.resetTimer) { clearTimeout(this.resetTimer); this.resetTimer = null; }
    this.history.push({ at: Date.now(), step: describeMode(mode) });
    if (this.history.length > 1000) this.history.splice(0, this.history.length - 1000);
    if (mode.kind !== 'pass') {
      this.stats.injected++;
      this.stats.byKind[mode.kind] = (this.stats.byKind[mode.kind] ?? 0) + 1;
    }
    this.logf(`faultproxy: ${describeMode(prev)} -> ${describeMode(mode)} (after ${Date.now() - this.modeSince} ms)`);
    this.modeNow = mode;
    this.modeSince = Date.now();
    switch (mode.kind) {
      case 'reset':
        this.resetAll();
        break;
      case 'halfopen':
        for (const c of this.conns) c.blackhole();
        this.countBlackholed();
        break;
      default:
        break;
    }
    if (prev.kind === 'stall' && mode.kind !== 'stall') {
      const held = [...this.deferred];
      this.deferred.clear();
      for (const c of this.conns) c.resume();
      for (const c of held) c.resume();
    }
    this.emit('mode', mode);
  }

  /** Reset (RST) every connection, black-holed ones too, without changing the mode. */
  resetAll(): number {
    let n = 0;
    for (const c of [...this.conns]) { c.teardown(true); n++; }
    return n;
  }

  /** An instantaneous fault: RST every connection (black-holed ones too); the mode stays. */
  reset(): number {
    this.history.push({ at: Date.now(), step: 'reset (action)' });
    if (this.history.length > 1000) this.history.splice(0, this.history.length - 1000);
    this.stats.injected++;
    this.stats.byKind.reset = (this.stats.byKind.reset ?? 0) + 1;
    const n = this.resetAll();
    this.logf(`faultproxy: reset ${n} connection(s) in mode ${describeMode(this.modeNow)}`);
    return n;
  }

  /**
   * Run the steps in order; a step without a duration is held until the next script (the last
   * step) or, for reset, is an instant action. A newer runScript() cancels this one.
   */
  async runScript(script: string | FaultStep[], loop = false): Promise<void> {
    const steps = typeof script === 'string' ? parseScript(script) : script;
    if (loop && !steps.some((st) => st.ms !== undefined)) throw new Error('fault script: --loop needs at least one step with a duration');
    const gen = ++this.scriptGen;
    do {
      for (const st of steps) {
        if (gen !== this.scriptGen) return;
        if (st.mode.kind === 'reset' && st.ms === undefined) { this.reset(); continue; }
        this.apply(st.mode);
        if (st.ms !== undefined) await new Promise((r) => setTimeout(r, st.ms).unref());
      }
    } while (loop && gen === this.scriptGen);
  }

  async close(): Promise<void> {
    this.scriptGen++;
    for (const c of [...this.conns]) c.teardown(false);
    await new Promise<void>((r) => (this.server ? this.server.close(() => r()) : r()));
  }
}

// ---- CLI ----

function main(argv: string[]): void {
  const opt = (k: string) => { const i = argv.indexOf(`--${k}`); return i >= 0 ? argv[i + 1] : undefined; };
  if (argv.includes('--help') || argv.includes('-h')) {
    process.stdout.write('usage: faultproxy --listen 127.0.0.1:PORT --target 127.0.0.1:PORT [--script "pass 2s, delay 200ms 2s, stall 5s, reset, drop 1s, halfopen 10s, pass"] [--loop] [--max-buffer BYTES] [--seed N]\n' +
      'modes: pass | delay N | stall | drop [bytes|chunks] | reset | halfopen; stdin lines are steps run at once\n');
    return;
  }
  const listen = parseEndpoint(opt('listen') ?? '127.0.0.1:0', '--listen');
  const targetArg = opt('target');
  if (!targetArg) throw new Error('--target 127.0.0.1:PORT is required');
  const target = parseEndpoint(targetArg, '--target');
  const script = opt('script');
  const steps = script ? parseScript(script) : undefined; // parse errors before listening
  const p = new FaultProxy({
    listen, target, maxBufferBytes: opt('max-buffer') ? Number(opt('max-buffer')) : undefined,
    seed: opt('seed') ? Number(opt('seed')) : undefined,
    log: (l) => process.stderr.write(`${new Date().toISOString()} ${l}\n`),
  });
  void p.listen().then((port) => {
    process.stderr.write(`faultproxy: 127.0.0.1:${port} -> ${target.host}:${target.port}\n`);
    if (steps) void p.runScript(steps, argv.includes('--loop'));
  });
  let buf = '';
  process.stdin.on('data', (d) => {
    buf += d;
    if (buf.length > 65536) buf = buf.slice(-65536);
    let i;
    while ((i = buf.indexOf('\n')) >= 0) {
      const line = buf.slice(0, i).trim();
      buf = buf.slice(i + 1);
      if (!line) continue;
      if (line === 'stats') { process.stderr.write(`${JSON.stringify(p.stats)}\n`); continue; }
      try { void p.runScript(parseScript(line)); } catch (e) { process.stderr.write(`faultproxy: ${(e as Error).message}\n`); }
    }
  });
  process.stdin.on('end', () => undefined);
  const stop = () => { process.stderr.write(`faultproxy: stats ${JSON.stringify(p.stats)}\n`); void p.close().then(() => process.exit(0)); };
  process.on('SIGINT', stop);
  process.on('SIGTERM', stop);
}

if (require.main === module) {
  try {
    main(process.argv.slice(2));
  } catch (e) {
    process.stderr.write(`faultproxy: ${(e as Error).message}\n`);
    process.exit(2);
  }
}
