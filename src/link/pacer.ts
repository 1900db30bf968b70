// The agent's bandwidth cap (--max-rate, DRBD's c-max-rate and c-min-rate on the sending side):
// a token bucket over every frame the core sends, in two classes. Mirrored writes and all other
// frames go first, in order; resync answers (the hub's reads and checksums, sendBulk) keep at
// least `resyncShare` of the rate while writes want more, take what writes leave, and never
// more than `maxResyncRate`. Owns the two queues, the tokens and the byte counts.
//
// Why reordering is safe: only bulk answers are overtaken, and only by frames sent after them;
// the hub marks a read's regions touched by any write applied while it is in flight, so an
// answer that arrives behind a newer write is dropped for those regions and read again (SPEC
// 7.2). Frames of one class keep their order. The pacer sits above the Link, so CRC sealing
// still happens in the order frames leave; PING/PONG go through the Link directly and are never held.
//
// Not installed without --max-rate: the core then sends straight on the Link (no cost per write).
import { assert } from '../assert';

/** The link under the pacer: a src/link Link satisfies it. */
export interface PacedLink {
  send(bufs: Buffer[], done?: () => void): void;
  queuedBytes(): number;
  has(cap: number): boolean;
  close?(reason?: Error): void;
}

export interface PacerOptions {
  maxRate: number; // bytes/s over the link, every frame counted
  resyncShare: number; // 0..1: share of maxRate resync answers keep while writes want more
  maxResyncRate: number; // bytes/s for resync answers at most (0: up to maxRate)
  now?: () => number; // ms clock (tests)
  setTimer?: (fn: () => void, ms: number) => unknown; // (tests)
  clearTimer?: (t: unknown) => void;
}

interface Held {
  bufs: Buffer[];
  done: (() => void) | undefined;
  bytes: number;
}

const BURST_MS = 50; // tokens saved up while idle at most: a short burst, then the rate
const MIN_BURST = 128 << 10;
const MAX_HELD = 1 << 20; // frames held per class; the mirror overflows on bytes long before this

function frameBytes(bufs: Buffer[]): number {
  let n = 0;
  for (let i = 0; i < bufs.length; i++) n += bufs[i].length;
  return n;
}

/** A FIFO with a head index (no shift() per frame). */
class Fifo {
  items: Held[] = [];
  head = 0;
  bytes = 0;
  get length(): number {
    return this.items.length - this.head;
  }
  push(h: Held): void {
    assert(this.length < MAX_HELD, 'the pacer holds a bounded number of frames');
    this.items.push(h);
    this.bytes += h.bytes;
  }
  peek(): Held {
    return this.items[this.head];
  }
  shift(): Held {
    const h = this.items[this.head++];
    this.bytes -= h.bytes;
    if (this.head > 1024 || this.head === this.items.length) {
      this.items = this.items.slice(this.head);
      this.head = 0;
    }
    return h;
  }
  drain(): Held[] {
    const all = this.items.slice(this.head);
    this.items = [];
    this.head = 0;
    this.bytes = 0;
    return all;
  }
}

/** A bucket of byte tokens refilled at `rate` up to `burst`; may go negative by one frame. */
class Bucket {
  tokens: number;
  constructor(
    public rate: number,
    public burst: number,
    private at: number,
  ) {
    this.tokens = burst;
  }
  refill(now: number): void {
    if (now > this.at) this.tokens = Math.min(this.burst, this.tokens + ((now - this.at) * this.rate) / 1000);
    this.at = now;
  }
  /** Milliseconds until the tokens are back to zero. */
  waitMs(): number {
    return this.tokens >= 0 ? 0 : Math.ceil((-this.tokens * 1000) / this.rate);
  }
}

export class LinkPacer {
  private link: PacedLink | null = null;
  private readonly writes = new Fifo();
  private readonly bulk = new Fifo();
  private readonly all: Bucket; // every byte: maxRate
  private readonly bulkMin: Bucket; // resync's guaranteed share while writes contend
  private readonly bulkMax: Bucket; // resync's own cap
  private timer: unknown = null;
  private readonly now: () => number;
  private readonly setTimer: (fn: () => void, ms: number) => unknown;
  private readonly clearTimer: (t: unknown) => void;
  private readonly wake = (): void => {
    this.timer = null;
    this.release();
  };
  /** Bytes handed to the link, all frames and resync answers alone (for /status and rates). */
  sentBytes = 0;
  sentResyncBytes = 0;
  /** Frames of the last connection dropped at its end (their buffers released). */
  droppedFrames = 0;

  constructor(readonly opts: PacerOptions) {
    assert(opts.maxRate > 0, 'a pacer has a positive rate');
    assert(opts.resyncShare >= 0 && opts.resyncShare <= 1, 'the resync share is a fraction');
    this.now = opts.now ?? (() => performance.now());
    this.setTimer = opts.setTimer ?? ((fn, ms) => setTimeout(fn, ms));
    this.clearTimer = opts.clearTimer ?? ((t) => clearTimeout(t as NodeJS.Timeout));
    const t = this.now(),
      burst = Math.max(MIN_BURST, (opts.maxRate * BURST_MS) / 1000);
    const maxBulk = opts.maxResyncRate > 0 ? Math.min(opts.maxResyncRate, opts.maxRate) : opts.maxRate;
    this.all = new Bucket(opts.maxRate, burst, t);
    const minRate = Math.max(1, opts.resyncShare * opts.maxRate);
    this.bulkMin = new Bucket(minRate, Math.max(MIN_BURST, (minRate * BURST_MS) / 1000), t);
    this.bulkMax = new Bucket(maxBulk, Math.max(MIN_BURST, (maxBulk * BURST_MS) / 1000), t);
  }

  /** A new connection: frames go out on `link` from now on. */
  attach(link: PacedLink): this {
    this.link = link;
    return this;
  }

  /** End the connection under it (the agent's mirror, on a link that cannot carry owed regions). */
  close(reason?: Error): void {
    this.link?.close?.(reason);
  }

  /** The connection ended: what it held is dropped (the dirty log and the hub's retries cover it). */
  detach(): void {
    this.link = null;
    if (this.timer !== null) this.clearTimer(this.timer);
    this.timer = null;
    for (const h of [...this.writes.drain(), ...this.bulk.drain()]) {
      this.droppedFrames++;
      h.done?.();
    }
  }

  has(cap: number): boolean {
    return this.link !== null && this.link.has(cap);
  }

  /** Bytes waiting to leave ahead of a new write: held writes and the socket's (resync answers do not count). */
  queuedBytes(): number {
    return this.writes.bytes + (this.link ? this.link.queuedBytes() : 0);
  }

  get heldResyncBytes(): number {
    return this.bulk.bytes;
  }

  /** A mirrored write or any other frame: in order, ahead of resync answers. */
  send(bufs: Buffer[], done?: () => void): void {
    if (this.link === null) return done?.();
    const bytes = frameBytes(bufs);
    if (this.writes.length === 0 && this.bulk.length === 0) {
      this.all.refill(this.now());
      if (this.all.tokens >= 0) return this.out(bufs, done, bytes, false); // the common case: no allocation
    }
    this.writes.push({ bufs, done, bytes });
    this.release();
  }

  /** A resync answer (the hub's read or checksum): paced to its share. */
  sendBulk(bufs: Buffer[], done?: () => void): void {
    if (this.link === null) return done?.();
    this.bulk.push({ bufs, done, bytes: frameBytes(bufs) });
    this.release();
  }

  private out(bufs: Buffer[], done: (() => void) | undefined, bytes: number, resync: boolean): void {
    this.all.tokens -= bytes;
    this.sentBytes += bytes;
    if (resync) {
      // Charged against the guaranteed share only while writes wait: resync using an idle link owes nothing.
      if (this.writes.length > 0) this.bulkMin.tokens -= bytes;
      this.bulkMax.tokens -= bytes;
      this.sentResyncBytes += bytes;
    }
    this.link!.send(bufs, done);
  }

  /** Send what the tokens allow: writes first, unless resync is owed its share; then wait. */
  private release(): void {
    if (this.link === null) return;
    const now = this.now();
    this.all.refill(now);
    this.bulkMin.refill(now);
    this.bulkMax.refill(now);
    while (this.all.tokens >= 0 && (this.writes.length > 0 || this.bulk.length > 0)) {
      const bulkReady = this.bulk.length > 0 && this.bulkMax.tokens >= 0;
      const bulkOwed = bulkReady && this.bulkMin.tokens >= 0;
      if (this.writes.length > 0 && !bulkOwed) {
        const h = this.writes.shift();
        this.out(h.bufs, h.done, h.bytes, false);
      } else if (bulkReady) {
        const h = this.bulk.shift();
        this.out(h.bufs, h.done, h.bytes, true);
      } else break; // only resync left, over its own cap
    }
    this.schedule();
  }

  private schedule(): void {
    if (this.timer !== null || (this.writes.length === 0 && this.bulk.length === 0)) return;
    let wait = this.all.waitMs();
    if (this.writes.length === 0) wait = Math.max(wait, this.bulkMax.waitMs());
    this.timer = this.setTimer(this.wake, Math.max(1, wait));
  }

  status() {
    return {
      maxRateBytesPerSec: this.opts.maxRate,
      resyncShare: this.opts.resyncShare,
      maxResyncRateBytesPerSec: this.bulkMax.rate,
      sentBytes: this.sentBytes,
      sentResyncBytes: this.sentResyncBytes,
      heldWriteBytes: this.writes.bytes,
      heldResyncBytes: this.bulk.bytes,
    };
  }
}
