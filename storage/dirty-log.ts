// The agent's persistent dirty log: regions of a protected volume written but not yet handed
// over to the hub. A region is durably dirty in the file *before* the guest's write can reach
// the image, and goes clean in the file only once every write to it is durable in the image.
// The ordering comes from an activity log as DRBD's (storage/activity-log.ts): the file holds
// the truth plus every region of each "hot" extent. A write into a hot extent costs no log IO;
// a write outside makes its extent hot with a page write and an fdatasync before it returns.
// Extents go cold lazily (at sync) once quiet and durable in the image (and, with coolIdleMs,
// idle that long). After a crash, every
// region of every extent that was hot reads dirty. A clean close writes the exact bitmap.
// File layout: 4 KiB header, then one 4 KiB page of bits per 32768 regions. The header also
// keeps the protected volume's identity (storage/volume-identity.ts): its UUID lineage and the
// image's fingerprint, exact only after a clean close.
import { DirtyBitmap, PAGE_BITS } from './bitmap';
import { Fingerprint, LogIdentity, newUuid, openImage, readLogIdentity, writeLogIdentity } from './volume-identity';
import { ActivityLog, ActivityLogOptions, AL_EXTENT_BYTES, AL_MAX_EXTENTS } from './activity-log';
import { FdLogFile, LogFile } from './log-file';

const MAGIC = 'RPHBDLOG';
const PAGE_BYTES = PAGE_BITS / 8;

export class DirtyLog {
  /** The truth: regions not yet handed over. */
  readonly bitmap: DirtyBitmap;
  /** What the file says: the truth plus every region of the hot extents. */
  private readonly disk: DirtyBitmap;
  private readonly al: ActivityLog;
  private readonly extentRegions: number;
  /** Makes the image's landed writes durable (the image's fdatasync); null: none (memory). */
  private imageSync: (() => void) | null = null;
  /**
   * No activity log: the file names exactly the marked regions, each made durable as it is
   * first marked (a page write and an fdatasync). For change maps (failover's, the failover
   * test's overlay), whose bits say where data is, so that a superset would be wrong or costly.
   */
  private readonly exactMarks: boolean;
  /** See ActivityLogOptions.coolIdleMs; 0: cool any quiet, durable extent. */
  private readonly coolIdleMs: number;
  /** The write clock at a sync (and when): extents not written since may cool coolIdleMs later. */
  private idleMark = { clock: 0, at: 0 };
  private coolUpTo = 0; // extents last written at or before this clock value have been idle long enough
  /** A wide range was marked since the last image sync: its bits are not held by hot extents. */
  private wideVolatile = false;
  /** True when the log did not exist or did not match: history unknown, everything dirty. */
  readonly fresh: boolean;
  /** The identity the header held at open (null: none, or fresh). */
  readonly previous: LogIdentity | null;
  /** This run's lineage (current UUID first); set by beginRun, random for a log in memory. */
  private runLineage: Buffer[] | null = null;

  private constructor(
    private file: LogFile | null,
    sizeBytes: number,
    regionSize: number,
    load: boolean,
    freshDirty: boolean,
    opts: ActivityLogOptions,
    private readonly header: Buffer = Buffer.alloc(PAGE_BYTES),
  ) {
    this.previous = load ? readLogIdentity(header) : null;
    this.bitmap = new DirtyBitmap(sizeBytes, regionSize);
    this.disk = new DirtyBitmap(sizeBytes, regionSize);
    const extentBytes = opts.extentBytes ?? Math.max(AL_EXTENT_BYTES, regionSize);
    if (extentBytes % regionSize !== 0)
      throw new RangeError(`activity-log extent of ${extentBytes} bytes: not a multiple of the region size`);
    this.extentRegions = extentBytes / regionSize;
    // A change map (opened clean, freshDirty false) keeps exact bits unless told otherwise.
    this.exactMarks = opts.maxExtents === 0 || (!freshDirty && opts.maxExtents === undefined);
    this.al = new ActivityLog(this.exactMarks ? 4 : (opts.maxExtents ?? AL_MAX_EXTENTS));
    this.coolIdleMs = opts.coolIdleMs ?? 0;
    if (!(this.coolIdleMs >= 0)) throw new RangeError(`activity-log idle time ${opts.coolIdleMs} ms: must be >= 0`);
    this.fresh = !load;
    if (load && file !== null) {
      const page = Buffer.alloc(PAGE_BYTES);
      for (let p = 0; p < this.bitmap.pageCount; p++) {
        const n = file.read(page, PAGE_BYTES * (p + 1));
        if (n < PAGE_BYTES) page.fill(0, n);
        const img = page.every((b) => b === 0) ? Buffer.alloc(0) : page;
        this.bitmap.loadPage(p, img);
        this.disk.loadPage(p, img);
      }
      this.bitmap.takeChangedPages();
      this.disk.takeChangedPages();
      // What we read may still be only in the page cache (a kill before a power loss): make it
      // durable before any write can rely on it.
      file.sync();
    } else if (freshDirty) {
      this.bitmap.setAll();
      this.disk.setAll();
      this.persist();
    }
  }

  /** In-memory only (tests, or --state not given: any restart means a full resync). */
  static memory(sizeBytes: number, regionSize: number, opts: ActivityLogOptions = {}): DirtyLog {
    return new DirtyLog(null, sizeBytes, regionSize, false, true, opts);
  }

  /**
   * `freshDirty`: a new (or unreadable) log starts all dirty, the safe default for history we
   * cannot know; overlay maps (failover test) start clean instead.
   */
  static open(
    path: string,
    sizeBytes: number,
    regionSize: number,
    freshDirty = true,
    opts: ActivityLogOptions = {},
  ): DirtyLog {
    const old = FdLogFile.open(path);
    return DirtyLog.openFile(old ?? FdLogFile.create(path), old !== null, sizeBytes, regionSize, freshDirty, opts);
  }

  /** The same over any LogFile (the power-loss simulation's recorder); `existed`: it may hold a log. */
  static openFile(
    file: LogFile,
    existed: boolean,
    sizeBytes: number,
    regionSize: number,
    freshDirty = true,
    opts: ActivityLogOptions = {},
  ): DirtyLog {
    let load = false;
    const h = Buffer.alloc(PAGE_BYTES);
    if (existed) {
      const n = file.read(h, 0);
      load =
        n >= 32 &&
        h.toString('latin1', 0, 8) === MAGIC &&
        Number(h.readBigUInt64LE(8)) === sizeBytes &&
        h.readUInt32LE(16) === regionSize;
    }
    if (!load) {
      // Pages all dirty and on disk first, the header last: a crash in between leaves a log
      // without a valid header, which opens as fresh (all dirty), never as clean.
      const pages = Math.ceil(Math.ceil(sizeBytes / regionSize) / PAGE_BITS);
      file.truncate(0);
      file.truncate(PAGE_BYTES * (1 + pages));
      const full = Buffer.alloc(PAGE_BYTES, 0xff);
      if (freshDirty) for (let p = 0; p < pages; p++) file.write(full, PAGE_BYTES * (p + 1));
      file.sync();
      h.fill(0);
      h.write(MAGIC, 0, 'latin1');
      h.writeBigUInt64LE(BigInt(sizeBytes), 8);
      h.writeUInt32LE(regionSize, 16);
      file.write(h, 0);
      file.sync();
    }
    return new DirtyLog(file, sizeBytes, regionSize, load, freshDirty, opts, h);
  }

  /**
   * The protected volume grew to `sizeBytes` (online resize): the new regions are clean here (the
   * hub syncs the new space itself). The file gains their pages (zeros) before the header names
   * the new size: a crash in between leaves a header that does not match the image, which opens
   * as fresh (all dirty), never as clean.
   */
  grow(sizeBytes: number): void {
    if (sizeBytes === this.bitmap.sizeBytes) return;
    this.bitmap.grow(sizeBytes);
    this.disk.grow(sizeBytes);
    if (this.file === null) return void this.disk.takeChangedPages();
    this.file.truncate(PAGE_BYTES * (1 + this.disk.pageCount));
    this.persist(true); // the old last page again: a full one was written all ones, new regions included
    this.file.sync();
    this.header.writeBigUInt64LE(BigInt(sizeBytes), 8);
    this.file.write(this.header, 0);
    this.file.sync();
  }

  /**
   * The agent starts a run on the image whose fingerprint is `image` (before any write to it):
   * decide the lineage (a new current UUID; the ancestors kept only if the image is the one the
   * log knew) and write it, marked unclean, durably. `change`: what was found changed, or null.
   */
  beginRun(image: Fingerprint): { lineage: Buffer[]; change: string | null } {
    const r = openImage(this.previous, this.fresh, image);
    this.runLineage = r.lineage;
    this.writeIdentity({ clean: false, lineage: r.lineage, image });
    return r;
  }

  /** This run's lineage, current UUID first. */
  get lineage(): Buffer[] {
    return (this.runLineage ??= [newUuid()]);
  }

  private writeIdentity(id: LogIdentity): void {
    if (this.file === null) return;
    writeLogIdentity(this.header, id);
    this.file.write(this.header, 0);
    this.file.sync();
  }

  /**
   * How to make the image's writes durable (its fdatasync). A log whose bits are cleared must
   * have it, or a cold extent could hold a landed but volatile write with a clean bit.
   */
  orderAfter(imageSync: () => void): void {
    this.imageSync = imageSync;
  }

  /** Bytes the file names dirty: the truth plus the hot extents. */
  get persistedDirtyBytes(): number {
    return this.disk.dirtyBytes;
  }

  /** Extents now hot. */
  get hotExtents(): number {
    return this.al.size;
  }

  /** Most extents hot at once. */
  get maxHotExtents(): number {
    return this.al.maxExtents;
  }

  /**
   * Mark bytes [start, end) dirty, durably in the file before this returns. `hold`: the image
   * write lands later, asynchronously; call landed() with the same range then. The common case
   * (one hot extent) does no IO and allocates nothing.
   */
  mark(start: number, end: number, hold = false): void {
    const bm = this.bitmap;
    const first = bm.regionOf(start),
      last = bm.regionOf(end - 1);
    if (bm.countRange(first, last + 1) !== last - first + 1) bm.setRegions(first, last);
    const e0 = Math.floor(first / this.extentRegions),
      e1 = Math.floor(last / this.extentRegions);
    if (e0 === e1 && this.al.touch(e0, hold)) return;
    this.markCold(first, last, e0, e1, hold);
  }

  /** A held write reached the image. */
  landed(start: number, end: number): void {
    if (this.exactMarks) return;
    const e0 = Math.floor(this.bitmap.regionOf(start) / this.extentRegions),
      e1 = Math.floor(this.bitmap.regionOf(end - 1) / this.extentRegions);
    if (this.wide(e0, e1)) {
      this.wideVolatile = true; // not held by hot extents: synced before any cold bit is cleared
      return;
    }
    for (let e = e0; e <= e1; e++) this.al.landed(e);
  }

  /** A range over more extents than a quarter of the log: marked in the bitmap alone. */
  private wide(e0: number, e1: number): boolean {
    return e1 - e0 + 1 > this.al.maxExtents / 4;
  }

  /** The slow path: make the range's extents hot (or, for a wide range, its regions) durably. */
  private markCold(first: number, last: number, e0: number, e1: number, hold: boolean): void {
    if (this.exactMarks) {
      if (this.disk.countRange(first, last + 1) === last - first + 1) return; // durable already
      this.disk.setRegions(first, last);
      this.persist();
      this.file?.sync();
      return;
    }
    if (this.wide(e0, e1)) {
      this.wideVolatile = true;
      this.disk.setRegions(first, last);
      this.persist();
      this.file?.sync();
      return;
    }
    const adding: number[] = [];
    for (let e = e0; e <= e1; e++) if (!this.al.has(e)) adding.push(e);
    for (let i = this.al.maxExtents - this.al.size; i < adding.length; i++) this.evict(e0, e1);
    for (const e of adding) this.disk.setRegions(e * this.extentRegions, this.extentLast(e));
    this.persist();
    this.file?.sync();
    // Hot only now that the file says so; a failed write above leaves them cold (retried).
    for (const e of adding) this.al.add(e);
    for (let e = e0; e <= e1; e++) this.al.touch(e, hold);
  }

  /** Make room: drop the least recently written extent, after syncing the image if need be. */
  private evict(lo: number, hi: number): void {
    let e = this.al.victim(lo, hi, true);
    if (e < 0 && (this.imageSync || this.file === null)) {
      this.syncImage();
      e = this.al.victim(lo, hi, true);
    }
    // No image to sync (change maps that are never cleared): any unheld extent may go.
    if (e < 0 && !this.imageSync) e = this.al.victim(lo, hi, false);
    if (e < 0) throw new Error(`activity log full: ${this.al.size} extents hold writes in flight`);
    this.cool(e);
  }

  /** Extent e goes cold: the file keeps only its truly dirty regions (reaches the file lazily). */
  private cool(e: number): void {
    this.al.remove(e);
    for (let r = e * this.extentRegions, last = this.extentLast(e); r <= last; r++)
      if (!this.bitmap.get(r) && this.disk.get(r)) this.disk.clearRegions(r, r);
  }

  private extentLast(e: number): number {
    return Math.min((e + 1) * this.extentRegions, this.bitmap.regions) - 1;
  }

  /** Clear a region; reaches the file once its extent is cold (at a sync). */
  clear(r: number): void {
    if (!this.bitmap.get(r)) return;
    this.bitmap.clearRegions(r, r);
    if (this.al.has(Math.floor(r / this.extentRegions))) return;
    // A cold extent's writes are durable in the image, except those of a wide range since.
    if (this.wideVolatile) this.syncImage();
    this.disk.clearRegions(r, r);
  }

  /** clear() of every region of [first, last], run by run (a whole volume's report at once). */
  clearRange(first: number, last: number): void {
    for (let r = this.bitmap.nextDirty(first); r >= 0 && r <= last;) {
      const end = Math.min(this.bitmap.nextClean(r), last + 1);
      this.bitmap.clearRegions(r, end - 1);
      this.clearCold(r, end - 1);
      r = end <= last ? this.bitmap.nextDirty(end) : -1;
    }
  }

  /** The file's bits of [a, b] outside hot extents (those keep theirs until they cool). */
  private clearCold(a: number, b: number): void {
    const er = this.extentRegions;
    let from = -1; // start of the cold span being gathered
    for (let e = Math.floor(a / er); e <= Math.floor(b / er); e++) {
      const lo = Math.max(a, e * er);
      if (!this.al.has(e)) {
        if (from < 0) from = lo;
        continue;
      }
      if (from >= 0) this.clearDisk(from, lo - 1);
      from = -1;
    }
    if (from >= 0) this.clearDisk(from, b);
  }

  private clearDisk(a: number, b: number): void {
    // A cold extent's writes are durable in the image, except those of a wide range since.
    if (this.wideVolatile) this.syncImage();
    this.disk.clearRegions(a, b);
  }

  private syncImage(): void {
    // A log in memory survives nothing: any restart resyncs everything, so order nothing.
    if (this.file !== null) {
      if (!this.imageSync) return;
      this.imageSync();
    }
    this.al.imageSynced();
    this.wideVolatile = false;
  }

  /** An image flush starts; pass the result to imageFlushed() once it completed. */
  imageFlushStarting(): number {
    return this.al.flushStarting();
  }

  imageFlushed(upTo: number): void {
    this.al.imageFlushed(upTo);
  }

  /** Write the file's changed pages (of `disk`), or all of them. */
  private persist(all = false): void {
    const changed = this.disk.takeChangedPages();
    if (this.file === null) return;
    const pages = all ? Array.from({ length: this.disk.pageCount }, (_, p) => p) : changed;
    for (const p of pages) this.file.write(expand(this.disk.pageImage(p)), PAGE_BYTES * (p + 1));
  }

  /**
   * Let quiet extents whose writes are durable in the image go cold, and write the changed
   * pages; durable adds an fdatasync (guest FLUSH). exact (clean close): the image is synced
   * first and the file then holds the truth alone.
   */
  sync(durable = false, exact = false): void {
    this.bitmap.takeChangedPages(); // the file follows `disk`
    if (exact) {
      this.syncImage();
      // A write still in flight (a close racing it) keeps its extent dirty in the file.
      for (const e of this.al.extents()) if (!this.al.held(e)) this.cool(e);
    } else if (this.al.size > 0) {
      const n = this.extentRegions;
      const quiet = (e: number) => this.bitmap.countRange(e * n, this.extentLast(e) + 1) === 0;
      for (const e of this.al.coolable(quiet, this.idleUpTo())) this.cool(e);
    }
    this.persist(exact);
    if (durable) this.file?.sync();
  }

  /**
   * The newest write stamp an extent may carry and still go cold now: every stamp while the log
   * is over half full (room matters more than a log write), else the stamp of a sync at least
   * coolIdleMs ago.
   */
  private idleUpTo(): number {
    if (this.coolIdleMs === 0 || this.al.size * 2 > this.al.maxExtents) return Infinity;
    const now = Date.now();
    if (now - this.idleMark.at >= this.coolIdleMs) {
      this.coolUpTo = this.idleMark.clock;
      this.idleMark = { clock: this.al.now, at: now };
    }
    return this.coolUpTo;
  }

  /** Clean close; `image` (the image's fingerprint, read now that it is synced) is kept as exact. */
  close(image?: () => Fingerprint | null): void {
    this.sync(true, true);
    const fp = image?.();
    if (fp && this.runLineage) this.writeIdentity({ clean: true, lineage: this.runLineage, image: fp });
    this.file?.close();
    this.file = null;
  }
}

const FULL = Buffer.alloc(PAGE_BYTES, 0xff);
const CLEAN = Buffer.alloc(PAGE_BYTES);

/** A page image (empty = clean, 1 byte = full, else the bits) as the 4 KiB the file holds; read-only. */
function expand(img: Buffer): Buffer {
  return img.length === 0 ? CLEAN : img.length === 1 ? FULL : img;
}
