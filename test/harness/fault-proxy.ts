// A fault-injecting TCP proxy for loopback tests: sits between an agent and the hub and, with
// modes switched at run time, passes, delays, stalls, drops bytes, resets connections or turns
// them half-open. Every buffer is bounded: a pipe holds at most maxBufferBytes, beyond that the
// source socket is paused (TCP backpressure reaches the sender, as on a congested link).
// With rateBytesPerSec each direction forwards at most that fast: a capped link.
// The modes and the script syntax: fault-script.ts; the per-connection plumbing: fault-connection.ts;
// the command line: tools/faultproxy.ts.
import * as net from 'node:net';
import { EventEmitter } from 'node:events';
import { mulberry32 } from './prng';
import { FaultMode, FaultStep, Endpoint, assertLoopback, parseScript, describeMode } from './fault-script';
import { Conn, FaultHost, FaultStats } from './fault-connection';

export type { FaultMode, FaultStep, Endpoint, FaultStats };

export interface FaultProxyOptions {
  listen?: Endpoint; // default 127.0.0.1:0 (an ephemeral port)
  target: Endpoint;
  maxBufferBytes?: number; // per direction per connection, default 4 MiB
  maxConnections?: number; // open + black-holed connections; beyond, new ones are reset (default 128)
  seed?: number; // drop offsets
  rateBytesPerSec?: number; // each direction of each connection at most this fast (default: no limit)
  log?: (line: string) => void;
}

export class FaultProxy extends EventEmitter implements FaultHost {
  readonly target: Endpoint;
  private readonly listenAt: Endpoint;
  readonly maxBuffer: number;
  readonly rateBytesPerSec: number;
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
  readonly stats: FaultStats = {
    accepted: 0,
    active: 0,
    blackholed: 0,
    bytesUp: 0,
    bytesDown: 0,
    bytesDropped: 0,
    resets: 0,
    injected: 0,
    byKind: {},
  };
  /** Every step applied, with its time: for test reports. */
  readonly history: { at: number; step: string }[] = [];

  constructor(o: FaultProxyOptions) {
    super();
    this.target = o.target;
    this.listenAt = o.listen ?? { host: '127.0.0.1', port: 0 };
    assertLoopback(this.target, 'target');
    assertLoopback(this.listenAt, 'listen');
    this.maxBuffer = o.maxBufferBytes ?? 4 << 20;
    this.rateBytesPerSec = o.rateBytesPerSec ?? 0;
    this.maxConns = o.maxConnections ?? 128;
    this.rand = mulberry32(o.seed ?? Date.now());
    this.logf = o.log ?? (() => undefined);
  }

  get mode(): FaultMode {
    return this.modeNow;
  }

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
      if (this.conns.size >= this.maxConns)
        this.logf(`faultproxy: ${this.conns.size} connections, limit reached; new one reset`);
      c.on('error', () => undefined);
      c.resetAndDestroy();
      this.stats.resets++;
      return;
    }
    const s = new net.Socket({ allowHalfOpen: true });
    const conn = new Conn(this, this.nextId++, c, s);
    this.conns.add(conn);
    this.stats.active = this.conns.size;
    if (this.modeNow.kind === 'halfopen') {
      conn.blackhole();
      this.countBlackholed();
      return;
    }
    conn.maybeConnect();
  }

  deferClose(c: Conn): void {
    this.deferred.add(c);
  }

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
    if (this.resetTimer) {
      clearTimeout(this.resetTimer);
      this.resetTimer = null;
    }
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
    for (const c of [...this.conns]) {
      c.teardown(true);
      n++;
    }
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
    if (loop && !steps.some((st) => st.ms !== undefined))
      throw new Error('fault script: --loop needs at least one step with a duration');
    const gen = ++this.scriptGen;
    do {
      for (const st of steps) {
        if (gen !== this.scriptGen) return;
        if (st.mode.kind === 'reset' && st.ms === undefined) {
          this.reset();
          continue;
        }
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
