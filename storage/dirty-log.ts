// The agent's persistent dirty log: regions of a protected volume written but not yet handed
// over to the hub. A region is persisted dirty *before* the guest's write reaches the image
// (so a crash can never hide a write), and persisted clean lazily once the hub has it.
// File layout: 4 KiB header, then one 4 KiB page of bits per 32768 regions.
import * as fs from 'node:fs';
import { DirtyBitmap, PAGE_BITS } from './bitmap';

const MAGIC = 'RPHBDLOG';
const PAGE_BYTES = PAGE_BITS / 8;

export class DirtyLog {
  readonly bitmap: DirtyBitmap;
  /** True when the log did not exist or did not match: history unknown, everything dirty. */
  readonly fresh: boolean;

  private constructor(private fd: number | null, sizeBytes: number, regionSize: number, load: boolean, freshDirty = true) {
    this.bitmap = new DirtyBitmap(sizeBytes, regionSize);
    this.fresh = !load;
    if (load && fd !== null) {
      const page = Buffer.alloc(PAGE_BYTES);
      for (let p = 0; p < this.bitmap.pageCount; p++) {
        const n = fs.readSync(fd, page, 0, PAGE_BYTES, PAGE_BYTES * (p + 1));
        if (n < PAGE_BYTES) page.fill(0, n);
        this.bitmap.loadPage(p, page.every((b) => b === 0) ? Buffer.alloc(0) : page);
      }
      this.bitmap.takeChangedPages();
    } else if (freshDirty) {
      this.bitmap.setAll();
      this.persist();
    }
  }

  /** In-memory only (tests, or --state not given: any restart means a full resync). */
  static memory(sizeBytes: number, regionSize: number): DirtyLog {
    return new DirtyLog(null, sizeBytes, regionSize, false);
  }

  /**
   * `freshDirty`: a new (or unreadable) log starts all dirty, the safe default for history we
   * cannot know; overlay maps (failover test) start clean instead.
   */
  static open(path: string, sizeBytes: number, regionSize: number, freshDirty = true): DirtyLog {
    let fd: number;
    let load = false;
    try {
      fd = fs.openSync(path, 'r+');
      const h = Buffer.alloc(32);
      fs.readSync(fd, h, 0, 32, 0);
      load = h.toString('latin1', 0, 8) === MAGIC && Number(h.readBigUInt64LE(8)) === sizeBytes && h.readUInt32LE(16) === regionSize;
    } catch (e: any) {
      if (e.code !== 'ENOENT') throw e;
      fd = fs.openSync(path, 'w+');
    }
    if (!load) {
      // Pages all dirty and on disk first, the header last: a crash in between leaves a log
      // without a valid header, which opens as fresh (all dirty), never as clean.
      const pages = Math.ceil(Math.ceil(sizeBytes / regionSize) / PAGE_BITS);
      fs.ftruncateSync(fd, 0);
      fs.ftruncateSync(fd, PAGE_BYTES * (1 + pages));
      const full = Buffer.alloc(PAGE_BYTES, 0xff);
      if (freshDirty) for (let p = 0; p < pages; p++) fs.writeSync(fd, full, 0, PAGE_BYTES, PAGE_BYTES * (p + 1));
      fs.fdatasyncSync(fd);
      const h = Buffer.alloc(PAGE_BYTES);
      h.write(MAGIC, 0, 'latin1');
      h.writeBigUInt64LE(BigInt(sizeBytes), 8);
      h.writeUInt32LE(regionSize, 16);
      fs.writeSync(fd, h, 0, PAGE_BYTES, 0);
      fs.fdatasyncSync(fd);
    }
    return new DirtyLog(fd, sizeBytes, regionSize, load, freshDirty);
  }

  /** Mark bytes [start, end) dirty; new bits reach the file before this returns. */
  mark(start: number, end: number): void {
    const bm = this.bitmap;
    const first = bm.regionOf(start), last = bm.regionOf(end - 1);
    let all = true;
    for (let r = first; r <= last && all; r++) all = bm.get(r);
    if (all) return;
    bm.setRegions(first, last);
    this.persist();
  }

  /** Clear a region; reaches the file at the next sync(). */
  clear(r: number): void {
    if (this.bitmap.get(r)) this.bitmap.clearRegions(r, r);
  }

  private persist(): void {
    if (this.fd === null) {
      this.bitmap.takeChangedPages();
      return;
    }
    const full = Buffer.alloc(PAGE_BYTES, 0xff);
    for (const p of this.bitmap.takeChangedPages()) {
      let img = this.bitmap.pageImage(p);
      if (img.length === 0) img = Buffer.alloc(PAGE_BYTES);
      else if (img.length === 1) img = full;
      fs.writeSync(this.fd, img, 0, PAGE_BYTES, PAGE_BYTES * (p + 1));
    }
  }

  /** Write lazily cleared pages; with durable, fdatasync too (guest FLUSH). */
  sync(durable = false): void {
    this.persist();
    if (durable && this.fd !== null) fs.fdatasyncSync(this.fd);
  }

  close(): void {
    this.sync(true);
    if (this.fd !== null) fs.closeSync(this.fd);
    this.fd = null;
  }
}
