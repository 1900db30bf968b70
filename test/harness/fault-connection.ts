// The fault proxy's socket plumbing: one proxied connection (client and target sockets) and its
// two directions, each a bounded queue that forwards, delays, holds or drops bytes as the mode
// says. The proxy hands each connection a FaultHost: the mode, the counters, and where to report.
import * as net from 'node:net';
import type { Endpoint, FaultMode } from './fault-script';

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

/** What a connection needs from its proxy. */
export interface FaultHost {
  readonly mode: FaultMode;
  readonly stats: FaultStats;
  readonly maxBuffer: number;
  readonly target: Endpoint;
  /** Bytes/s each direction of each connection forwards at most (0: no limit), a capped link. */
  readonly rateBytesPerSec: number;
  rand(): number;
  /** A close arrived while stalled: take it into account when the stall ends. */
  deferClose(c: Conn): void;
  /** The connection is torn down. */
  forget(c: Conn): void;
}

interface Item {
  buf: Buffer;
  at: number;
}

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
  private tokens = 0; // rate limit: bytes this pipe may forward now (negative: a debt)
  private tokensAt = Date.now();

  constructor(
    readonly conn: Conn,
    readonly src: net.Socket,
    readonly dst: net.Socket,
    readonly up: boolean,
  ) {}

  get p(): FaultHost {
    return this.conn.proxy;
  }

  onData(chunk: Buffer): void {
    const p = this.p;
    if (this.conn.dead || this.conn.gone) {
      p.stats.bytesDropped += chunk.length;
      return;
    }
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
    if (mode.kind === 'reset') {
      p.stats.bytesDropped += chunk.length;
      return;
    } // about to be reset
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
      const wait = Math.max(it.at - Date.now(), this.rateWait());
      if (wait > 0) {
        if (!this.timer)
          this.timer = setTimeout(() => {
            this.timer = null;
            this.pump();
          }, wait);
        break;
      }
      this.qHead++;
      this.qBytes -= it.buf.length;
      this.tokens -= it.buf.length;
      if (this.up) this.p.stats.bytesUp += it.buf.length;
      else this.p.stats.bytesDown += it.buf.length;
      const ok = this.dst.write(it.buf);
      if (!ok) {
        this.waitingDrain = true;
        this.dst.once('drain', () => {
          this.waitingDrain = false;
          this.pump();
        });
        break;
      }
    }
    if (this.qHead > 1024 || this.qHead === this.q.length) {
      this.q = this.q.slice(this.qHead);
      this.qHead = 0;
    }
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

  /** Milliseconds until the rate limit lets the next chunk go (0: now, or no limit). */
  private rateWait(): number {
    const rate = this.p.rateBytesPerSec;
    if (!rate) return 0;
    const now = Date.now();
    this.tokens = Math.min(rate / 50, this.tokens + ((now - this.tokensAt) * rate) / 1000); // 20 ms burst
    this.tokensAt = now;
    return this.tokens >= 0 ? 0 : Math.ceil((-this.tokens * 1000) / rate);
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

  get done(): boolean {
    return this.ended;
  }
}

export class Conn {
  readonly up: Pipe;
  readonly down: Pipe;
  targetUp = false;
  dead = false; // half-open: a black hole for good
  gone = false; // torn down
  private connecting = false;

  constructor(
    readonly proxy: FaultHost,
    readonly id: number,
    readonly client: net.Socket,
    readonly server: net.Socket,
  ) {
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
    if (this.client.destroyed) {
      this.teardown(false);
      return;
    } // gave up while the link was stalled
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
    if (this.proxy.mode.kind === 'stall') {
      this.proxy.deferClose(this);
      from.eof = true;
      return;
    }
    if (hadError) {
      this.teardown(true);
      return;
    } // pass the RST on
    from.eof = true;
    from.pump();
    if (!this.targetUp && other === this.server) {
      this.teardown(false);
      return;
    }
    this.checkDone();
  }

  checkDone(): void {
    const cGone = this.client.destroyed,
      sGone = this.server.destroyed || !this.targetUp;
    if ((this.up.done || cGone) && (this.down.done || sGone) && (cGone || sGone || (this.up.done && this.down.done)))
      this.teardown(false);
  }

  /** After a stall: what was held goes out, closes held meanwhile take effect. */
  resume(): void {
    if (this.dead || this.gone) return;
    if (!this.targetUp) {
      this.maybeConnect();
      return;
    }
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
      if (rst && (s !== this.server || this.targetUp)) {
        s.resetAndDestroy();
        this.proxy.stats.resets++;
      } else s.destroy();
    }
    this.proxy.forget(this);
  }
}
