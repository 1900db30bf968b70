// The agent's persistent dirty log: regions of a protected volume written but not yet handed
// over to the hub. A region is persisted dirty *before* the guest's write reaches the image
// (so a crash can never hide a write), and persisted clean lazily once the hub has it.
// Like DRBD's activity log, regions written since the last sync stay dirty on disk for one
// more sync interval: a hot region costs no log write per guest write, only a slightly larger
// resync after a crash. A clean close writes the exact bitmap.
// File layout: 4 KiB header, then one 4 KiB page of bits per 32768 regions.
import * as fs from 'node:fs';
import { DirtyBitmap, PAGE_BITS } from './bitmap';

const MAGIC = 'RPHBDLOG';
const PAGE_BYTES = PAGE_BITS / 8;

export class DirtyLog {
  /** The truth: regions not yet handed over. */
  readonly bitmap: DirtyBitmap;
  /** What the file says: always a superset of bitmap. */
  private readonly disk: DirtyBitmap;
  /** Regions marked since the last sync; kept dirty on disk through the next one. */
  private hot: DirtyBitmap;
  private agingPages: number[] = [];
  /** True when the log did not exist or did not match: history unknown, everything dirty. */
  readonly fresh: boolean;

  private constructor(
    private fd: number | null,
    sizeBytes: number,
    regionSize: number,
    load: boolean,
    freshDirty = true,
  ) {
    this.bitmap = new DirtyBitmap(sizeBytes, regionSize);
    this.disk = new DirtyBitmap(sizeBytes, regionSize);
    this.hot = new DirtyBitmap(sizeBytes, regionSize);
    this.fresh = !load;
    if (load && fd !== null) {
      const page = Buffer.alloc(PAGE_BYTES);
      for (let p = 0; p < this.bitmap.pageCount; p++) {
        const n = fs.readSync(fd, page, 0, PAGE_BYTES, PAGE_BYTES * (p + 1));
        if (n < PAGE_BYTES) page.fill(0, n);
        const img = page.every((b) => b === 0) ? Buffer.alloc(0) : page;
        this.bitmap.loadPage(p, img);
        this.disk.loadPage(p, img);
      }
      this.bitmap.takeChangedPages();
      this.disk.takeChangedPages();
    } else if (freshDirty) {
      this.bitmap.setAll();
      this.disk.setAll();
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
      load =
        h.toString('latin1', 0, 8) === MAGIC &&
        Number(h.readBigUInt64LE(8)) === sizeBytes &&
        h.readUInt32LE(16) === regionSize;
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

  /** Bytes the file names dirty: the truth plus regions written within the last sync interval. */
  get persistedDirtyBytes(): number {
    return this.disk.dirtyBytes;
  }

  /** Mark bytes [start, end) dirty; bits new to the file reach it before this returns. */
  mark(start: number, end: number): void {
    const bm = this.bitmap;
    const first = bm.regionOf(start),
      last = bm.regionOf(end - 1);
    if (!allSet(bm, first, last)) bm.setRegions(first, last);
    if (!allSet(this.hot, first, last)) this.hot.setRegions(first, last);
    if (allSet(this.disk, first, last)) return; // the common case: no log IO
    const before: [number, Buffer][] = [];
    for (let p = Math.floor(first / PAGE_BITS); p <= Math.floor(last / PAGE_BITS); p++)
      before.push([p, Buffer.from(this.disk.pageImage(p))]);
    this.disk.setRegions(first, last);
    try {
      this.persist();
    } catch (e) {
      // The file may lack these bits: `disk` must not claim them, or the next write to the
      // region would skip the log (pages that did reach the file merely stay more dirty).
      for (const [p, img] of before) this.disk.loadPage(p, img);
      throw e;
    }
  }

  /** Clear a region; reaches the file at the second sync() from now at the latest. */
  clear(r: number): void {
    if (this.bitmap.get(r)) this.bitmap.clearRegions(r, r);
  }

  /** Write the file's changed pages (of `disk`). */
  private persist(): void {
    const pages = this.disk.takeChangedPages();
    if (this.fd === null) return;
    for (const p of pages) fs.writeSync(this.fd, expand(this.disk.pageImage(p)), 0, PAGE_BYTES, PAGE_BYTES * (p + 1));
  }

  /**
   * Bring the file down to the truth plus the regions marked since the last sync (exact: the
   * truth alone, for a clean close); durable adds an fdatasync (guest FLUSH).
   */
  sync(durable = false, exact = false): void {
    const hotPages = this.hot.takeChangedPages();
    // Pages held dirty by the previous hot set are due to age out now.
    const pages = new Set([...this.bitmap.takeChangedPages(), ...hotPages, ...this.agingPages]);
    this.agingPages = hotPages;
    if (exact) for (let p = 0; p < this.disk.pageCount; p++) pages.add(p);
    for (const p of pages) {
      const img = Buffer.from(expand(this.bitmap.pageImage(p))); // a copy: the hot bits go in
      if (!exact) {
        const h = this.hot.pageImage(p);
        if (h.length === 1) img.fill(0xff);
        else for (let i = 0; i < h.length; i++) img[i] |= h[i];
      }
      this.disk.loadPage(p, img); // copies and normalizes; records no change: written just below
      if (this.fd !== null) fs.writeSync(this.fd, img, 0, PAGE_BYTES, PAGE_BYTES * (p + 1));
    }
    this.hot = new DirtyBitmap(this.bitmap.sizeBytes, this.bitmap.regionSize);
    this.persist();
    if (durable && this.fd !== null) fs.fdatasyncSync(this.fd);
  }

  close(): void {
    this.sync(true, true);
    if (this.fd !== null) fs.closeSync(this.fd);
    this.fd = null;
  }
}

function allSet(bm: DirtyBitmap, first: number, last: number): boolean {
  return bm.countRange(first, last + 1) === last - first + 1;
}

const FULL = Buffer.alloc(PAGE_BYTES, 0xff);
const CLEAN = Buffer.alloc(PAGE_BYTES);

/** A page image (empty = clean, 1 byte = full, else the bits) as the 4 KiB the file holds; read-only. */
function expand(img: Buffer): Buffer {
  return img.length === 0 ? CLEAN : img.length === 1 ? FULL : img;
}
