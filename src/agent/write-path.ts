// The guest's write path: every write, zeroing and flush the NBD server (or a test) makes on a
// protected volume. A write marks its regions dirty in the log before it touches the image,
// counts them busy while it lands (so no ack can clear them meanwhile), then hands the data to
// the mirror. Owns the range locks and the busy counts. Over the backlog bound (lag-bound.ts)
// a write's reply waits, never the write: the small-write fast path checks one boolean.
import { SYNC_WRITE_MAX } from '../../storage/volume';
import { assert } from '../assert';
import { RangeLocks } from './range-locks';
import type { AgentVolume, VolumeTable } from './volume';
import type { RegionHolder } from './ports';
import { keysIn } from './region-gate';
import type { Mirror, OverflowSink } from './mirror';
import { SyncFlushPolicy } from './sync-flush';

/** The backlog bound as the write path sees it (lag-bound.ts's LagBound). */
export interface ReplyGate {
  /** Over the bound now: the fast path steps aside (its reply must wait). */
  readonly over: boolean;
  /** A write landed: whether its reply must wait. */
  wrote(): boolean;
  /** Resolves when the reply may go. */
  hold(): Promise<void>;
}

const NO_GATE: ReplyGate = { over: false, wrote: () => false, hold: () => Promise.resolve() };

export class WritePath implements RegionHolder {
  private readonly locks: RangeLocks[]; // by volume index
  private readonly busy: Map<number, number>[]; // by volume index: region -> writes landing on it
  // The one small write writeNow is doing (volume index, regions): busy as the map's are, kept
  // out of the map because a Map emptied on every write reallocates its table each time.
  private nowVolume = -1;
  private nowFirst = 0;
  private nowLast = -1;

  constructor(
    private readonly volumes: VolumeTable,
    private readonly mirror: Mirror,
    private readonly owed: OverflowSink,
    private readonly replies: ReplyGate = NO_GATE,
    private readonly syncFlush = new SyncFlushPolicy(null, 0),
  ) {
    this.locks = volumes.list.map(() => new RangeLocks());
    this.busy = volumes.list.map(() => new Map());
    // The log lets an extent go cold, or a bit go clean, only once the image holds its writes
    // durably: it may have to sync the image itself (a full activity log, a clean close).
    for (const v of volumes.list) {
      const t = v.target;
      if (t.flushSync) v.log.orderAfter(() => t.flushSync!());
    }
  }

  holds(v: AgentVolume, region: number): boolean {
    if (v.index === this.nowVolume && region >= this.nowFirst && region <= this.nowLast) return true;
    return this.busy[v.index].has(region);
  }

  heldRuns(v: AgentVolume, first: number, last: number, out: number[]): void {
    if (v.index === this.nowVolume && this.nowFirst <= last && this.nowLast >= first)
      out.push(this.nowFirst, this.nowLast + 1);
    keysIn(this.busy[v.index], first, last, out);
  }

  /**
   * Apply a guest write to the local image and mirror it. The write never waits for the hub; its
   * reply does while the backlog is over --max-lag (after the write, its range lock released). A
   * large write may come as the pieces it arrived in: written with writev and mirrored as they are.
   */
  async write(name: string, offset: number, data: Buffer | Buffer[]): Promise<void> {
    if (!Array.isArray(data) && this.writeNow(name, offset, data)) return;
    const v = this.volumes.named(name);
    let len = 0;
    if (Array.isArray(data)) for (const p of data) len += p.length;
    else len = data.length;
    v.checkRange(offset, offset + len);
    const unlock = await this.locks[v.index].lock(offset, offset + len);
    try {
      this.begin(v, offset, offset + len, true);
      try {
        const t = v.target;
        if (Array.isArray(data)) await (t.writev ? t.writev(data, offset) : t.write(Buffer.concat(data, len), offset));
        else if (t.writeSync && len <= SYNC_WRITE_MAX) t.writeSync(data, offset);
        else await t.write(data, offset);
        this.mirror.mirror(v, offset, data, len);
      } finally {
        this.end(v, offset, offset + len, true);
      }
    } finally {
      unlock();
    }
    if (this.replies.wrote()) await this.replies.hold();
  }

  /**
   * The same for a small write, done before returning: true when written and mirrored, false
   * when it must go through write() (too large, an overlapping write still in progress, or its
   * reply must wait: over the backlog bound).
   * Nothing can come between its pwrite and its mirror frame, so it needs no range lock.
   * The hot path: no allocation, closure or promise of its own.
   */
  writeNow(name: string, offset: number, data: Buffer): boolean {
    const v = this.volumes.named(name),
      len = data.length,
      t = v.target;
    if (!t.writeSync || len > SYNC_WRITE_MAX || this.replies.over) return false;
    v.checkRange(offset, offset + len);
    if (this.locks[v.index].locked(offset, offset + len)) return false;
    assert(this.nowVolume < 0, 'writeNow does not nest');
    v.log.mark(offset, offset + len, false);
    const bitmap = v.log.bitmap;
    this.nowFirst = bitmap.regionOf(offset);
    this.nowLast = bitmap.regionOf(offset + len - 1);
    this.nowVolume = v.index;
    try {
      t.writeSync(data, offset);
      this.mirror.mirror(v, offset, data, len);
    } finally {
      this.nowVolume = -1;
    }
    return true;
  }

  /** Zeroing/trim: applied locally; the range is handed to the hub as dirty instead of as data. */
  async zero(name: string, offset: number, length: number, apply: () => Promise<void>): Promise<void> {
    const v = this.volumes.named(name);
    v.checkRange(offset, offset + length);
    const unlock = await this.locks[v.index].lock(offset, offset + length);
    try {
      this.begin(v, offset, offset + length, true);
      try {
        await apply();
        this.owed.owe(v, offset, offset + length);
      } finally {
        this.end(v, offset, offset + length, true);
      }
    } finally {
      unlock();
    }
  }

  /**
   * Hold [start, end) of `v` as a guest write does: failback's remote writes (remote-io.ts) and
   * guest writes then land on the image in the order their frames leave on the link.
   */
  lockRange(v: AgentVolume, start: number, end: number): Promise<() => void> {
    return this.locks[v.index].lock(start, end);
  }

  /**
   * A guest flush: the image's fdatasync, and once it completed, the extents written before it
   * may go cold. The log needs no sync here: every mark was durable before its write was
   * issued, and bits it clears reach the file lazily (a superset is safe), so a guest flush
   * costs one fdatasync, not two (one of them on the event loop).
   * The hub's FLUSH marker leaves first, while the fdatasync runs: it names the writes sent
   * before this flush, exactly those the flush covers, and the hub's point and commit do not
   * depend on the image's sync. Sent after it, its send (and the hub's wakeup) came between the
   * fdatasync and the guest's reply, on the path a guest flushing after every write waits on.
   */
  async flush(name: string): Promise<void> {
    const v = this.volumes.named(name);
    this.mirror.flush();
    const upTo = v.log.imageFlushStarting();
    const start = performance.now();
    await v.target.flush();
    this.syncFlush.took(start, performance.now(), false);
    v.log.imageFlushed(upTo);
  }

  /**
   * The same flush done before returning, its fdatasync on the event loop: true when done, false
   * when it must go through flush() (the image has no synchronous flush, or the device was slow
   * lately: sync-flush.ts). The NBD server asks only when the flush is its one request in
   * flight on any connection: no guest request is queued behind the blocked loop.
   */
  flushNow(name: string): boolean {
    const v = this.volumes.named(name),
      t = v.target;
    const start = performance.now();
    if (!t.flushSync || !this.syncFlush.allowed(start)) return false;
    this.mirror.flush();
    const upTo = v.log.imageFlushStarting();
    try {
      t.flushSync();
    } catch (e) {
      this.syncFlush.failed(performance.now());
      throw e;
    }
    this.syncFlush.took(start, performance.now(), true);
    v.log.imageFlushed(upTo);
    return true;
  }

  /**
   * Persist the regions dirty before the image changes (durably: the activity log), and keep
   * them from being cleared meanwhile. `held`: the image write completes later (end() says so).
   */
  private begin(v: AgentVolume, start: number, end: number, held: boolean): void {
    v.log.mark(start, end, held);
    const bitmap = v.log.bitmap,
      busy = this.busy[v.index];
    for (let r = bitmap.regionOf(start), last = bitmap.regionOf(end - 1); r <= last; r++) {
      busy.set(r, (busy.get(r) ?? 0) + 1);
    }
  }

  private end(v: AgentVolume, start: number, end: number, held: boolean): void {
    if (held) v.log.landed(start, end);
    const bitmap = v.log.bitmap,
      busy = this.busy[v.index];
    for (let r = bitmap.regionOf(start), last = bitmap.regionOf(end - 1); r <= last; r++) {
      const n = busy.get(r);
      assert(n !== undefined && n > 0, 'a write ends only on regions it made busy');
      if (n === 1) busy.delete(r);
      else busy.set(r, n - 1);
    }
  }
}
