// NBD transmission phase on one connection (nbdkit's protocol.c): request headers parsed from
// the receive queue, a write's payload received in place or from the queue, each request
// dispatched to the export, one simple reply per request with its errno, and flow control
// (at most MAX_INFLIGHT requests running; beyond it the connection stops reading).
import {
  parseRequest,
  NbdCmd,
  NbdErr,
  CMD_FLAG_FUA,
  MAX_REQUEST,
  REQUEST_HEADER,
  NbdRequest,
} from '../../protocol/nbd';
import { assert } from '../assert';
import type { ByteQueue } from './byte-queue';
import type { NbdExport } from './exports';
import type { BufferPool } from '../buffer-pool';
import type { Logger } from '../log';

export const MAX_INFLIGHT = 64; // requests per connection; beyond it the socket is paused
const GATHER_MIN = 64 * 1024; // writes this large reach a writev export unjoined, or are read in place
const IN_PLACE_MAX = 1 << 20; // larger writes (rare) arrive in chunks and reach writev as such
const IN_PLACE_AFTER = 32 * 1024; // payload bytes that must have arrived before its buffer is taken
const DIRECT_READ_MIN = 16 * 1024; // a socket read straight into the payload only for this much

/** What transmission needs from its connection. */
export interface TransmissionIo {
  /** A simple reply; the handle's two halves as parsed (NbdRequest). */
  reply(error: number, handleHi: number, handleLo: number): void;
  /** `sent` (optional) runs once the socket no longer needs `data`. */
  replyData(handleHi: number, handleLo: number, data: Buffer, sent?: () => void): void;
  pause(): void;
  /** Read again (and parse what is queued). */
  resume(): void;
  /** End gracefully: the client disconnected and every reply is out. */
  end(): void;
  fatal(why: string): void;
  readonly closed: boolean;
}

export interface NbdStats {
  connections: number;
  requests: number;
  errors: number;
  /** Requests in flight on all of the server's connections. */
  inflight: number;
}

export interface TransmissionOptions {
  /** Large write payloads may be read straight into their own buffer (src/net-read.ts). */
  readonly direct: boolean;
  readonly pool?: BufferPool;
  /** READ replies' buffers, given back once sent (a fresh buffer per read costs page faults and GC). */
  readonly readPool?: BufferPool;
  readonly stats: NbdStats;
  readonly log: Logger;
}

/** The NBD error for a failure: VolumeError carries the code in `errno`, Node's own errors in `code`. */
export function errnoOf(e: unknown, fallback: number): number {
  const err = e as { errno?: unknown; code?: unknown } | null;
  switch (typeof err?.errno === 'string' ? err.errno : err?.code) {
    case 'ENOSPC':
      return NbdErr.ENOSPC;
    case 'EIO':
      return NbdErr.EIO;
    case 'EROFS':
    case 'EPERM':
    case 'EACCES':
      return NbdErr.EPERM;
    case 'ENOMEM':
      return NbdErr.ENOMEM;
    default:
      return fallback;
  }
}

export class Transmission {
  private inflight = 0;
  private paused = false;
  private closing = false; // the client sent DISC
  private pendingWrite: NbdRequest | null = null; // header parsed, payload still arriving
  private inPlace: Buffer | null = null; // the pending write's own buffer, being filled
  private filled = 0;
  private idleWaiters: (() => void)[] = [];

  constructor(
    readonly exp: NbdExport,
    private readonly queue: ByteQueue,
    private readonly io: TransmissionIo,
    private readonly opts: TransmissionOptions,
  ) {}

  /** Resolves once no request is running on the export. */
  idle(): Promise<void> {
    if (this.inflight === 0) return Promise.resolve();
    return new Promise((resolve) => this.idleWaiters.push(resolve));
  }

  /** Where the next socket read should land: the rest of an in-place payload, or null. */
  readTarget(): Buffer | null {
    const r = this.pendingWrite,
      buf = this.inPlace;
    if (!r || !buf || this.closing || this.queue.length !== 0 || r.length - this.filled < DIRECT_READ_MIN) return null;
    return buf.subarray(this.filled, r.length);
  }

  /** n bytes were read into readTarget(). */
  readDirect(n: number): void {
    this.filled += n;
    assert(this.pendingWrite !== null && this.filled <= this.pendingWrite.length, 'in-place fill beyond its request');
  }

  /** Parse and dispatch everything queued; returns when more bytes are needed or reading pauses. */
  parse(): void {
    const q = this.queue;
    while (!this.closing) {
      if (this.pendingWrite) {
        if (!this.receivePayload()) return;
        continue;
      }
      if (this.inflight >= MAX_INFLIGHT) {
        if (!this.paused) {
          this.paused = true;
          this.io.pause();
        }
        return;
      }
      if (q.length < REQUEST_HEADER) return;
      let r: NbdRequest;
      try {
        // read in place when the header lies in one chunk (nearly always): no view per request
        const c = q.contiguous(REQUEST_HEADER);
        if (c !== null) {
          r = parseRequest(c, q.headOffset);
          q.skip(REQUEST_HEADER);
        } else r = parseRequest(q.take(REQUEST_HEADER), 0);
      } catch (e) {
        return this.io.fatal((e as Error).message);
      }
      if (r.type === NbdCmd.WRITE) {
        if (r.length > MAX_REQUEST) return this.io.fatal(`write of ${r.length} bytes exceeds ${MAX_REQUEST}`);
        this.pendingWrite = r;
        continue;
      }
      this.exec(r, undefined);
    }
  }

  /** The pending write's payload: true once it is all here and dispatched. */
  private receivePayload(): boolean {
    const r = this.pendingWrite!,
      q = this.queue;
    if (
      !this.inPlace &&
      this.opts.direct &&
      r.length >= GATHER_MIN &&
      r.length <= IN_PLACE_MAX &&
      q.length >= IN_PLACE_AFTER &&
      q.length < r.length
    ) {
      // Its buffer only once some of its bytes are here: memory follows bytes received.
      this.inPlace = this.opts.pool ? this.opts.pool.take(r.length) : Buffer.allocUnsafeSlow(r.length);
      this.filled = 0;
    }
    if (this.inPlace) {
      const k = Math.min(q.length, r.length - this.filled);
      if (k > 0) q.takeInto(this.inPlace, this.filled, k);
      this.filled += k;
      assert(this.filled <= r.length, 'in-place fill beyond its request');
      if (this.filled < r.length) return false;
      const data = this.inPlace;
      this.inPlace = null;
      this.pendingWrite = null;
      this.exec(r, data);
      return true;
    }
    if (q.length < r.length) return false;
    this.pendingWrite = null;
    this.exec(r, this.exp.writev && r.length >= GATHER_MIN ? q.takeParts(r.length) : q.take(r.length));
    return true;
  }

  private exec(r: NbdRequest, data: Buffer | Buffer[] | undefined): void {
    this.opts.stats.requests++;
    this.opts.stats.inflight++;
    this.inflight++;
    assert(this.inflight <= MAX_INFLIGHT, 'more requests in flight than MAX_INFLIGHT');
    const inRange = r.offset + r.length <= this.exp.sizeBytes;
    switch (r.type) {
      case NbdCmd.READ:
        if (!inRange || r.length > MAX_REQUEST) return this.done(r, NbdErr.EINVAL);
        return this.read(r);
      case NbdCmd.WRITE:
        return this.write(r, data!, inRange);
      case NbdCmd.WRITE_ZEROES:
        if (!inRange) return this.done(r, NbdErr.ENOSPC);
        return this.settle(r, this.exp.zero(r.offset, r.length), undefined);
      case NbdCmd.FLUSH:
        if (this.opts.stats.inflight === 1 && this.exp.flushNow) {
          // The server's only request: done at once (no threadpool round trip before its reply).
          // No guest request is queued behind it; the hub link, new requests and /status wait
          // for the sync, which sync-flush.ts keeps short (a slow one sends the next to the pool).
          try {
            if (this.exp.flushNow()) return this.done(r, 0);
          } catch (err) {
            return this.failed(r, err, 'NBD flush failed');
          }
        }
        this.exp.flush().then(
          () => this.done(r, 0),
          (err) => this.failed(r, err, 'NBD flush failed'),
        );
        return;
      case NbdCmd.TRIM:
        // Advisory: the data may stay as it is, so nothing changes and nothing is mirrored.
        return this.done(r, inRange ? 0 : NbdErr.EINVAL);
      case NbdCmd.DISC:
        this.inflight--; // no reply to a disconnect
        this.opts.stats.inflight--;
        this.closing = true;
        if (this.inflight === 0) this.io.end();
        return;
      default:
        return this.done(r, NbdErr.EINVAL);
    }
  }

  private read(r: NbdRequest): void {
    const pool = this.opts.readPool;
    const buf = pool ? pool.take(r.length) : Buffer.allocUnsafe(r.length);
    this.exp.read(buf, r.offset).then(
      () => this.done(r, 0, buf, pool),
      (err) => {
        pool?.give(buf);
        this.failed(r, err, 'NBD read failed');
      },
    );
  }

  private write(r: NbdRequest, data: Buffer | Buffer[], inRange: boolean): void {
    const e = this.exp;
    if (!inRange) {
      this.release(data);
      return this.done(r, NbdErr.ENOSPC);
    }
    if (!Array.isArray(data) && e.writeNow && !(r.flags & CMD_FLAG_FUA)) {
      // A small write done at once: no promise round trip before its reply.
      let now: boolean;
      try {
        now = e.writeNow(data, r.offset);
      } catch (err) {
        this.release(data);
        return this.failed(r, err, 'NBD write failed');
      }
      if (now) {
        this.release(data);
        return this.done(r, 0);
      }
    }
    this.settle(r, Array.isArray(data) ? e.writev!(data, r.offset) : e.write(data, r.offset), data);
  }

  /** A write or zeroing under way: flushed when FUA asks, then its buffer released and replied. */
  private settle(r: NbdRequest, p: Promise<void>, data: Buffer | Buffer[] | undefined): void {
    p.then(() => (r.flags & CMD_FLAG_FUA ? this.exp.flush() : undefined)).then(
      () => {
        this.release(data);
        this.done(r, 0);
      },
      (err) => {
        this.release(data);
        this.failed(r, err, 'NBD write failed');
      },
    );
  }

  /** A payload buffer taken from the pool goes back once the export is done with it. */
  private release(data: Buffer | Buffer[] | undefined): void {
    if (data !== undefined && !Array.isArray(data)) this.opts.pool?.give(data);
  }

  private failed(r: NbdRequest, err: unknown, what: string): void {
    const cause = (err as Error)?.message;
    this.opts.log.error({ export: this.exp.name, offset: r.offset, length: r.length, cause }, what);
    this.done(r, errnoOf(err, NbdErr.EIO));
  }

  /** The one reply to request r. */
  private done(r: NbdRequest, err: number, data?: Buffer, from?: BufferPool): void {
    assert(this.inflight > 0, 'a reply to a request not in flight');
    this.inflight--;
    this.opts.stats.inflight--;
    if (err) this.opts.stats.errors++;
    if (this.io.closed) from?.give(data!);
    else {
      if (data && !err) this.io.replyData(r.handleHi, r.handleLo, data, from && (() => from.give(data)));
      else this.io.reply(err, r.handleHi, r.handleLo);
      if (this.paused && this.inflight < MAX_INFLIGHT / 2) {
        this.paused = false;
        this.io.resume();
      }
      if (this.closing && this.inflight === 0) this.io.end();
    }
    if (this.inflight === 0 && this.idleWaiters.length) this.wakeIdle();
  }

  private wakeIdle(): void {
    const waiters = this.idleWaiters;
    this.idleWaiters = [];
    for (const w of waiters) w();
  }
}
