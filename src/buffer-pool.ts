// Reusable buffers for the data path. A fresh 1 MiB allocation per frame costs page faults and
// page clearing in the kernel (above glibc's mmap threshold) and GC work in V8, more than the
// copy into it. take() hands out a view of a pooled buffer with one hold on it; hold() adds
// one for a second user (a socket write still sending it, say); give() drops one, and the
// last returns the buffer. Buffers never given back are simply collected: the pool tracks
// lending in a WeakMap and bounds only what it keeps idle. An owner whose demand swings (the
// hub's apply queue fills to 64 MiB and drains to half) sizes maxIdle to its peak, so a refill
// reuses instead of faulting in fresh memory, and calls trim() now and then to hand back what a
// whole period never needed.
import { misalign } from '../storage/fileio';
import { assert } from './assert';

export class BufferPool {
  private free: Buffer[] = []; // a stack: the bottom ones have been idle longest
  private lowIdle = 0; // the fewest idle since the last trim(): that many were never needed
  private readonly lent = new WeakMap<object, { holds: number; base: Buffer }>(); // by ArrayBuffer
  stats = { taken: 0, reused: 0, given: 0 };

  /**
   * With `align`, each buffer starts `align` bytes past an aligned address and take(n, skew)
   * places byte `skew` of the view on that address: a frame's data lands aligned for O_DIRECT.
   */
  constructor(
    readonly bufferBytes: number,
    readonly maxIdle: number,
    readonly align = 0,
  ) {
    if (!(bufferBytes > 0 && maxIdle >= 0 && align >= 0))
      throw new RangeError(`bad pool ${bufferBytes} x ${maxIdle}, align ${align}`);
  }

  /** A buffer of n bytes; pooled when n fits a pool buffer. Contents are not cleared. */
  take(n: number, skew = 0): Buffer {
    if (!(skew >= 0 && skew <= this.align))
      throw new RangeError(`skew ${skew} outside the pool's alignment ${this.align}`);
    // larger than a pool buffer (the hub's reads of zero space grow to 8 MiB): not pooled, still aligned
    if (n > this.bufferBytes)
      return this.align ? this.fresh(n).subarray(this.align - skew, this.align - skew + n) : Buffer.allocUnsafeSlow(n);
    this.stats.taken++;
    let b = this.free.pop();
    this.lowIdle = Math.min(this.lowIdle, this.free.length);
    if (b) this.stats.reused++;
    else b = this.fresh();
    this.lent.set(b.buffer, { holds: 1, base: b });
    const at = this.align - skew;
    return b.subarray(at, at + n);
  }

  private fresh(bytes = this.bufferBytes): Buffer {
    if (!this.align) return Buffer.allocUnsafeSlow(bytes);
    const raw = Buffer.allocUnsafeSlow(bytes + 2 * this.align);
    const m = misalign(raw, this.align); // -1 without the addon: unaligned, still correct
    const at = m <= 0 ? 0 : this.align - m;
    return raw.subarray(at, at + this.align + bytes);
  }

  /** One more hold on a lent buffer (any view of it); false when it is not the pool's. */
  hold(view: Buffer): boolean {
    const e = this.lent.get(view.buffer);
    if (!e) return false;
    assert(e.holds > 0, 'a lent buffer has a hold until its last give'); // at 0 it left `lent`
    e.holds++;
    return true;
  }

  /** Drop a hold on a buffer (any view of it) from take(); anything else is ignored, as is a give after the last. */
  give(view: Buffer): void {
    const e = this.lent.get(view.buffer);
    if (!e) return;
    assert(e.holds > 0, 'a lent buffer has a hold until its last give');
    if (--e.holds > 0) return;
    this.lent.delete(view.buffer);
    this.stats.given++;
    if (this.free.length < this.maxIdle) this.free.push(e.base);
    assert(this.free.length <= this.maxIdle, 'idle buffers within maxIdle');
  }

  /**
   * Drop idle buffers that no take() needed since the last trim(), keeping at least `keep` idle:
   * memory held for a burst goes back once the bursts stop.
   */
  trim(keep: number): number {
    assert(keep >= 0, 'trim keeps a count of buffers');
    const drop = Math.max(0, Math.min(this.lowIdle, this.free.length - keep));
    this.free.splice(0, drop);
    this.lowIdle = this.free.length;
    return drop;
  }

  get idle(): number {
    return this.free.length;
  }
}
