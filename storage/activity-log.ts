// The activity log's bookkeeping, as DRBD's: the bounded set of "hot" extents of a dirty log
// whose every region is durably marked dirty in the log file. A write inside a hot extent costs
// no log IO; a write outside makes its extent hot with one durable log write before the image
// write is issued (storage/dirty-log.ts does the IO). An extent leaves the set (goes cold) only
// when every image write into it is durable and none is in flight: its stamp (a write clock)
// is older than the last completed image flush, and no write holds it. After a crash, every
// region of every extent that was hot reads as dirty from the file. No IO here.

import { assert } from './assert';

export const AL_EXTENT_BYTES = 4 << 20;
export const AL_MAX_EXTENTS = 256;

export interface ActivityLogOptions {
  /** Bytes per extent: a multiple of the region size (default 4 MiB). */
  extentBytes?: number;
  /**
   * Most extents hot at once: the resync after a crash is at most this many extents (default
   * 256). 0: no activity log, exact bits (the default for a log opened with freshDirty false).
   */
  maxExtents?: number;
  /**
   * While the log is at most half full, a quiet extent goes cold only once nothing was written
   * into it for this long (default 0: at the first sync that finds it quiet and durable). A
   * cold extent's next write costs a log write and an fdatasync on the writer's path, so an
   * extent written every few hundred milliseconds should stay hot, as DRBD's do until evicted.
   */
  coolIdleMs?: number;
}

export class ActivityLog {
  readonly maxExtents: number;
  private readonly slotOf = new Map<number, number>(); // extent -> slot
  private readonly extentAt: Float64Array; // slot -> extent, -1 when free
  private readonly stamp: Float64Array; // slot -> clock of the last write issued or landed in it
  private readonly holds: Uint32Array; // slot -> writes in flight in it
  private clock = 0;
  private durableUpTo = 0; // image writes stamped up to this are durable (a flush completed after them)

  constructor(maxExtents: number) {
    if (!Number.isInteger(maxExtents) || maxExtents < 4 || maxExtents > 65536)
      throw new RangeError(`activity log of ${maxExtents} extents: must be 4..65536`);
    this.maxExtents = maxExtents;
    this.extentAt = new Float64Array(maxExtents).fill(-1);
    this.stamp = new Float64Array(maxExtents);
    this.holds = new Uint32Array(maxExtents);
  }

  get size(): number {
    return this.slotOf.size;
  }

  has(extent: number): boolean {
    return this.slotOf.has(extent);
  }

  /** A write into `extent` is in flight. */
  held(extent: number): boolean {
    const s = this.slotOf.get(extent);
    return s !== undefined && this.holds[s] > 0;
  }

  /** A write into `extent`: false when it is not hot. `hold`: the write lands later (landed()). */
  touch(extent: number, hold: boolean): boolean {
    const s = this.slotOf.get(extent);
    if (s === undefined) return false;
    this.stamp[s] = ++this.clock;
    if (hold) this.holds[s]++;
    return true;
  }

  /** A held write into `extent` reached the image (not yet durably). */
  landed(extent: number): void {
    const s = this.slotOf.get(extent);
    assert(s !== undefined && this.holds[s] > 0, 'a held extent stays hot until its write lands');
    this.holds[s]--;
    this.stamp[s] = ++this.clock;
  }

  /** An image flush starts: writes landed so far are durable once it completes (imageFlushed). */
  flushStarting(): number {
    return this.clock;
  }

  imageFlushed(upTo: number): void {
    if (upTo > this.durableUpTo) this.durableUpTo = upTo;
  }

  /** Every image write not held is durable now (a synchronous image flush just returned). */
  imageSynced(): void {
    this.durableUpTo = this.clock;
  }

  /** May this slot's extent go cold: nothing in flight, every write into it durable in the image. */
  private settled(s: number): boolean {
    return this.extentAt[s] >= 0 && this.holds[s] === 0 && this.stamp[s] <= this.durableUpTo;
  }

  /** The write clock: a stamp to compare with later (coolable's `writtenUpTo`). */
  get now(): number {
    return this.clock;
  }

  /**
   * Hot extents that may go cold now; `quiet(extent)`: no region of it is dirty;
   * `writtenUpTo`: only extents last written at or before this clock value.
   */
  coolable(quiet: (extent: number) => boolean, writtenUpTo = Infinity): number[] {
    const out: number[] = [];
    for (let s = 0; s < this.maxExtents; s++)
      if (this.settled(s) && this.stamp[s] <= writtenUpTo && quiet(this.extentAt[s])) out.push(this.extentAt[s]);
    return out;
  }

  /**
   * The extent to drop for a new one: the least recently written settled one outside
   * [lo, hi]; with `durableOnly` false, also unheld ones whose writes are not yet durable
   * (the caller then syncs the image first). -1 when every other extent is held.
   */
  victim(lo: number, hi: number, durableOnly: boolean): number {
    let best = -1;
    for (let s = 0; s < this.maxExtents; s++) {
      const e = this.extentAt[s];
      if (e < 0 || (e >= lo && e <= hi) || this.holds[s] > 0) continue;
      if (durableOnly && this.stamp[s] > this.durableUpTo) continue;
      if (best < 0 || this.stamp[s] < this.stamp[best]) best = s;
    }
    return best < 0 ? -1 : this.extentAt[best];
  }

  add(extent: number): void {
    assert(!this.slotOf.has(extent) && this.slotOf.size < this.maxExtents, 'a free slot for a new hot extent');
    const s = this.extentAt.indexOf(-1);
    this.extentAt[s] = extent;
    this.holds[s] = 0;
    this.stamp[s] = ++this.clock;
    this.slotOf.set(extent, s);
  }

  remove(extent: number): void {
    const s = this.slotOf.get(extent);
    assert(s !== undefined && this.holds[s] === 0, 'only an unheld hot extent goes cold');
    this.extentAt[s] = -1;
    this.slotOf.delete(extent);
  }

  /** Every hot extent (clean close: they all go cold). */
  extents(): number[] {
    return [...this.slotOf.keys()];
  }

  clear(): void {
    this.slotOf.clear();
    this.extentAt.fill(-1);
    this.holds.fill(0);
  }
}
