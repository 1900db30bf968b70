// Point-in-time view of a recovery volume that keeps changing underneath (the COLO
// active/hidden construction). Replication keeps writing the base; before a base region is
// overwritten for the first time, its content is copied to the hidden layer. The test VM's
// writes go to the active layer and never reach the base. Reads: active -> hidden -> base.
// Both layers are sparse files with a region map persisted beside them, so a hub restart
// reopens the same view.
import * as fs from 'node:fs';
import * as path from 'node:path';
import { BlockTarget, FileVolume, SYNC_LARGE_MAX, SYNC_WRITE_MAX } from './volume';
import { DirtyLog } from './dirty-log';

export class PointInTimeView implements BlockTarget {
  private readonly hidden: FileVolume;
  private readonly hiddenMap: DirtyLog;
  private readonly active: FileVolume;
  private readonly activeMap: DirtyLog;
  private writeChain: Promise<void> = Promise.resolve();
  preservedBytes = 0;
  writtenBytes = 0;

  /** Opens the layers in `dir` (created empty, or reopened after a restart). */
  constructor(
    private readonly base: BlockTarget,
    readonly dir: string,
    readonly regionSize: number,
  ) {
    fs.mkdirSync(dir, { recursive: true });
    const size = base.sizeBytes;
    this.hidden = FileVolume.open(path.join(dir, 'hidden.img'), { createSize: size, minSize: size });
    this.hiddenMap = DirtyLog.open(path.join(dir, 'hidden.map'), size, regionSize, false);
    this.active = FileVolume.open(path.join(dir, 'active.img'), { createSize: size, minSize: size });
    this.activeMap = DirtyLog.open(path.join(dir, 'active.map'), size, regionSize, false);
  }

  get sizeBytes(): number {
    return this.base.sizeBytes;
  }

  private regions(start: number, end: number): [number, number] {
    return [Math.floor(start / this.regionSize), Math.floor((end - 1) / this.regionSize)];
  }

  /**
   * Called before [start, end) of the base is overwritten: copy every region not yet kept to
   * the hidden layer, durably, and only then let the overwrite proceed.
   */
  async preserve(start: number, end: number): Promise<void> {
    const [first, last] = this.regions(start, end);
    const hm = this.hiddenMap.bitmap;
    let copied = false;
    for (let r = first; r <= last; r++) {
      if (hm.get(r)) continue;
      const a = r * this.regionSize,
        b = Math.min(a + this.regionSize, this.sizeBytes);
      const buf = Buffer.allocUnsafe(b - a);
      await this.base.read(buf, a);
      await this.hidden.write(buf, a);
      this.preservedBytes += b - a;
      copied = true;
    }
    if (!copied) return;
    await this.hidden.flush(); // data before the map says it is there
    for (let r = first; r <= last; r++)
      if (!hm.get(r)) this.hiddenMap.mark(r * this.regionSize, r * this.regionSize + 1);
    this.hiddenMap.sync(true); // the map before the base changes
  }

  async read(buf: Buffer, offset: number): Promise<void> {
    if (offset < 0 || offset + buf.length > this.sizeBytes)
      throw new RangeError(`read [${offset}, ${offset + buf.length}) outside the view`);
    let done = 0;
    while (done < buf.length) {
      const pos = offset + done;
      const r = Math.floor(pos / this.regionSize);
      const n = Math.min(buf.length - done, (r + 1) * this.regionSize - pos);
      const piece = buf.subarray(done, done + n);
      if (this.activeMap.bitmap.get(r)) await this.active.read(piece, pos);
      else if (this.hiddenMap.bitmap.get(r)) await this.hidden.read(piece, pos);
      else {
        await this.base.read(piece, pos);
        // An overwrite may have started after our check: it marks hidden first, so re-check.
        if (this.hiddenMap.bitmap.get(r)) await this.hidden.read(piece, pos);
      }
      done += n;
    }
  }

  /** The test VM's writes: copy-up partial regions into the active layer; serialized. */
  write(buf: Buffer, offset: number): Promise<void> {
    const p = this.writeChain.then(() => this.writeInOrder(buf, offset));
    this.writeChain = p.catch(() => undefined);
    return p;
  }

  private async writeInOrder(buf: Buffer, offset: number): Promise<void> {
    if (offset < 0 || offset + buf.length > this.sizeBytes)
      throw new RangeError(`write [${offset}, ${offset + buf.length}) outside the view`);
    let done = 0;
    while (done < buf.length) {
      const pos = offset + done;
      const r = Math.floor(pos / this.regionSize);
      const a = r * this.regionSize,
        b = Math.min(a + this.regionSize, this.sizeBytes);
      const n = Math.min(buf.length - done, b - pos);
      if (this.activeMap.bitmap.get(r) || (pos === a && n === b - a)) {
        await this.active.write(buf.subarray(done, done + n), pos);
      } else {
        const region = Buffer.allocUnsafe(b - a);
        await this.read(region, a);
        buf.copy(region, pos - a, done, done + n);
        await this.active.write(region, a);
      }
      if (!this.activeMap.bitmap.get(r)) this.activeMap.mark(a, a + 1);
      done += n;
    }
    this.writtenBytes += buf.length;
  }

  async flush(): Promise<void> {
    await this.active.flush();
    this.activeMap.sync(true);
  }

  get keptBytes(): number {
    return this.hiddenMap.bitmap.dirtyBytes;
  }
  get activeBytes(): number {
    return this.activeMap.bitmap.dirtyBytes;
  }

  async close(): Promise<void> {
    await this.hidden.close();
    await this.active.close();
    this.hiddenMap.close();
    this.activeMap.close();
  }

  /** Throw the test away: layers and maps are deleted; the base is untouched. */
  async discard(): Promise<void> {
    await this.close();
    fs.rmSync(this.dir, { recursive: true, force: true });
  }
}

/**
 * The recovery volume as replication sees it: a thin filter over the base target (the file, or
 * change-tracking filters over it) that, while a point-in-time view exists, preserves regions
 * into the view before overwriting them.
 */
export class GuardedTarget implements BlockTarget {
  view: PointInTimeView | null = null;
  constructor(readonly base: BlockTarget) {}
  get sizeBytes(): number {
    return this.base.sizeBytes;
  }
  read(buf: Buffer, offset: number): Promise<void> {
    return this.base.read(buf, offset);
  }
  /** Writes below may be in flight after write() returns (direct writes, a remote image): landing() says where. */
  get windowed(): boolean {
    return this.base.landing !== undefined;
  }
  /** The landing of writes in flight over [start, end) below the guard (storage/volume.ts). */
  landing(start: number, end: number): Promise<void> | null {
    return this.base.landing ? this.base.landing(start, end) : null;
  }
  /** A write below failed after write() returned; the next flush throws it. */
  writesFailed(): boolean {
    return this.base.writesFailed?.() ?? false;
  }
  async write(buf: Buffer, offset: number): Promise<void> {
    if (this.view) await this.view.preserve(offset, offset + buf.length);
    await this.base.write(buf, offset);
  }
  /** A tryWriteSync of [start, end) follows in this turn (BlockTarget.prepareWrite): told below if it will pass. */
  prepareWrite(start: number, end: number): void {
    if (!this.view && end - start <= SYNC_WRITE_MAX) this.base.prepareWrite?.(start, end);
  }

  /**
   * The fast path, when no view needs regions preserved first; false: use write(). A write up to
   * SYNC_LARGE_MAX goes too, in SYNC_WRITE_MAX pieces, where it is only a page-cache copy: no
   * write window below (--cache none, a remote image) and no filter reading the volume first
   * (the journal's before-image), so the event loop waits for no disk read (only, as every
   * buffered writer may, where the kernel throttles writers of dirty pages). The apply queue
   * applies one write at a time: a threadpool round trip per 1 MiB write took 2.8 ms against
   * the pwrite's 0.3 ms (docs/BENCHMARKS.md, Round 9).
   */
  tryWriteSync(buf: Buffer, offset: number): boolean {
    const b = this.base,
      end = offset + buf.length;
    if (this.view || !b.writeSync) return false;
    if (buf.length <= SYNC_WRITE_MAX) {
      if (b.landing?.(offset, end)) return false; // a direct write in flight under it
      b.writeSync(buf, offset);
      return true;
    }
    if (buf.length > SYNC_LARGE_MAX || this.windowed || b.readsBefore?.(offset, end)) return false;
    for (let o = 0; o < buf.length; o += SYNC_WRITE_MAX) b.writeSync(buf.subarray(o, o + SYNC_WRITE_MAX), offset + o);
    return true;
  }
  flush(): Promise<void> {
    return this.base.flush();
  }
  close(): Promise<void> {
    return this.base.close();
  }
}
