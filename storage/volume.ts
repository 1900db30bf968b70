// Block targets: positioned reads/writes and flush over a regular file or block device
// (FileVolume), or memory (MemoryVolume, for simulations). No networking here.
import * as fs from 'node:fs';
import { DIRECT_ALIGN, dropCache, dataExtents, misalign } from './fileio';
import { BulkReader } from './bulk-reader';
import { assert } from './assert';
import { WriteWindow } from './write-window';

export interface BlockTarget {
  readonly sizeBytes: number;
  /** A target other than a file that this open created empty: it holds zeroes (the hub's known-zero map). */
  readonly createdEmpty?: boolean;
  read(buf: Buffer, offset: number): Promise<void>;
  write(buf: Buffer, offset: number): Promise<void>;
  flush(): Promise<void>;
  close(): Promise<void>;
  /** Optional synchronous write for small buffers: a page-cache pwrite beats a threadpool round trip. */
  writeSync?(buf: Buffer, offset: number): void;
  /**
   * Optional read for replication traffic (sync, resync, checksums), kept out of readahead so
   * that it leaves no large page-cache folios under the guest's small writes (storage/fadvise).
   */
  readBulk?(buf: Buffer, offset: number): Promise<void>;
  /** Optional synchronous fdatasync: the agent's activity log needs every landed write durable (write-path.ts). */
  flushSync?(): void;
  /** Optional gathered write: the pieces land back to back from offset. */
  writev?(parts: Buffer[], offset: number): Promise<void>;
  /** Optional: the data extents within [start, end) (holes excluded), or null when unknown. */
  dataExtents?(start: number, end: number): [number, number][] | null;
  /** Optional: drop the target's clean cached pages (after bulk writes have been flushed). */
  dropCache?(): void;
  /**
   * Optional: the landing of writes (and reads) still in flight over [start, end) after write()
   * returned, or null when none are (storage/write-window.ts). A synchronous writer or a reader
   * through a descriptor of its own goes only on null, else waits for it first.
   */
  landing?(start: number, end: number): Promise<void> | null;
  /** Optional: a write that write() returned early for failed since the last flush (which throws it). */
  writesFailed?(): boolean;
  /**
   * Optional, for a remote image: read [offset, offset + buf.length) ahead of every write asked
   * for after this call that overlaps it, and call `then` (with the failure, if any) before such a
   * write is submitted. Returns at once; the journal records a before-image this way without
   * holding up the apply queue for the round trip.
   */
  readThen?(buf: Buffer, offset: number, then: (e: Error | null) => void): void;
  /**
   * Optional: a small synchronous write of [start, end) follows later in this event-loop turn,
   * after others announced the same way (the journal's capture filter stages its before-image,
   * to be written with theirs in one append). Only a hint: the write itself stays correct without it.
   */
  prepareWrite?(start: number, end: number): void;
  /**
   * Optional, for a filter that reads the volume before it writes (the journal's capture): true
   * when a writeSync of [start, end) now would read first. Absent: it never does.
   */
  readsBefore?(start: number, end: number): boolean;
}

/**
 * Holds on pooled buffers (src/buffer-pool.ts): a target that keeps a caller's buffer after
 * write() returns (a write in flight) holds it, and gives it back once it landed, so the pool
 * stays the one owner of its lending. hold() is false for a buffer not the pool's.
 */
export interface BufferHolds {
  hold(view: Buffer): boolean;
  give(view: Buffer): void;
}

/** A shared buffer of zeroes; never written to. */
export const ZEROES = Buffer.alloc(1 << 20);

/** Zero [offset, offset + length) in 1 MiB pieces: memory stays bounded whatever the length. */
export async function writeZeroes(
  write: (buf: Buffer, offset: number) => Promise<void>,
  offset: number,
  length: number,
): Promise<void> {
  for (let p = offset; p < offset + length; p += ZEROES.length)
    await write(ZEROES.subarray(0, Math.min(ZEROES.length, offset + length - p)), p);
}

/** Writes up to this size go through writeSync() where a target has it. */
export const SYNC_WRITE_MAX = 64 * 1024;
/**
 * A larger write goes synchronously too, in SYNC_WRITE_MAX pieces, up to this size, where it
 * only copies into the page cache (overlay.ts, GuardedTarget.tryWriteSync).
 */
export const SYNC_LARGE_MAX = 1 << 20;

export class VolumeError extends Error {
  constructor(
    message: string,
    readonly path: string,
    readonly offset?: number,
    readonly errno?: string,
  ) {
    super(message);
    this.name = 'VolumeError';
  }
}

function readAt(fd: number, buf: Buffer, off: number, pos: number): Promise<number> {
  return new Promise((res, rej) => fs.read(fd, buf, off, buf.length - off, pos, (e, n) => (e ? rej(e) : res(n))));
}
function writeAt(fd: number, buf: Buffer, off: number, pos: number): Promise<number> {
  return new Promise((res, rej) => fs.write(fd, buf, off, buf.length - off, pos, (e, n) => (e ? rej(e) : res(n))));
}

function skip(parts: Buffer[], n: number): Buffer[] {
  let i = 0;
  while (i < parts.length && n >= parts[i].length) n -= parts[i++].length;
  if (i === parts.length) return [];
  return [parts[i].subarray(n), ...parts.slice(i + 1)];
}

/** Size of a block device in bytes, from sysfs (fstat reports 0 for devices). */
function blockDeviceSize(st: fs.Stats): number {
  const major = Math.floor(st.rdev / 256) & 0xfff,
    minor = (st.rdev & 0xff) | ((st.rdev >> 12) & 0xfff00);
  const sectors = fs.readFileSync(`/sys/dev/block/${major}:${minor}/size`, 'utf8').trim();
  return Number(sectors) * 512;
}

export interface OpenOptions {
  /** Create the file sparse at this size when it does not exist. */
  createSize?: number;
  /** Refuse a target smaller than this. */
  minSize?: number;
  readOnly?: boolean;
  /**
   * Large aligned writes bypass the page cache (O_DIRECT on a second fd), as a replica's
   * pages are never read back in normal operation: no copy into the cache, no writeback later.
   */
  direct?: boolean;
  /** With `direct`: the pool whose buffers writes keep while in flight (else they wait to land). */
  holds?: BufferHolds;
}

export { DIRECT_ALIGN };
/** Writes from this size on go direct when aligned (smaller ones gain nothing from it). */
export const DIRECT_MIN = 256 * 1024;
/**
 * Direct writes in flight per file, and their bytes: the device takes its full speed from
 * about 8 (fio qd8, tools/bench/hub-ingest.sh), and libuv's 4 threads run 4 at once anyway.
 */
export const DIRECT_WINDOW_WRITES = 8;
export const DIRECT_WINDOW_BYTES = 8 << 20;

export class FileVolume implements BlockTarget {
  private bulk: BulkReader | null = null; // the descriptors of readBulk, opened on its first call
  private directFd = -1; // O_DIRECT, opened on the first direct write; -2: not available here
  private directOff = false; // the device refused an aligned direct write: buffered from now on
  directBytes = 0; // bytes written around the page cache
  /** Writes in flight (their reads and writes ordered by it); null unless `direct`. */
  private readonly window: WriteWindow | null;
  readonly landing?: (start: number, end: number) => Promise<void> | null;
  readonly writesFailed?: () => boolean;
  private constructor(
    readonly path: string,
    private fd: number,
    public sizeBytes: number, // grows only through refreshSize()
    private readonly direct = false,
    private readonly holds: BufferHolds | null = null,
  ) {
    this.window = direct ? new WriteWindow(DIRECT_WINDOW_WRITES, DIRECT_WINDOW_BYTES) : null;
    const w = this.window;
    if (w) this.landing = (start, end) => w.over(start, end); // absent otherwise: nothing to ask on the fast path
    if (w) this.writesFailed = () => w.failed;
  }

  /**
   * The file (or device) may have grown underneath (an online resize): take its size now if
   * larger. Returns the size found (rounded down to `align`), which may be smaller (a shrink:
   * never taken here).
   */
  refreshSize(align = 1): number {
    const st = fs.fstatSync(this.fd);
    let size = st.isBlockDevice() ? blockDeviceSize(st) : st.size;
    size -= size % align; // a partial tail is not part of the volume
    if (size > this.sizeBytes) this.sizeBytes = size;
    return size;
  }

  static open(path: string, opts: OpenOptions = {}): FileVolume {
    let fd: number;
    try {
      fd = fs.openSync(path, opts.readOnly ? 'r' : 'r+');
    } catch (e: any) {
      if (e.code !== 'ENOENT' || opts.createSize === undefined) {
        throw new VolumeError(`cannot open ${path}: ${e.message}`, path, undefined, e.code);
      }
      fd = fs.openSync(path, 'wx+');
      fs.ftruncateSync(fd, opts.createSize); // sparse
    }
    const st = fs.fstatSync(fd);
    const size = st.isBlockDevice() ? blockDeviceSize(st) : st.size;
    if (!st.isBlockDevice() && !st.isFile()) {
      fs.closeSync(fd);
      throw new VolumeError(`${path} is neither a regular file nor a block device`, path);
    }
    if (opts.minSize !== undefined && size < opts.minSize) {
      fs.closeSync(fd);
      throw new VolumeError(`${path} has ${size} bytes but the protected volume has ${opts.minSize} bytes`, path);
    }
    return new FileVolume(path, fd, size, !!opts.direct && !opts.readOnly, opts.holds ?? null);
  }

  private check(len: number, offset: number): void {
    if (offset < 0 || offset + len > this.sizeBytes) {
      throw new VolumeError(
        `IO [${offset}, ${offset + len}) outside ${this.path} (${this.sizeBytes} bytes)`,
        this.path,
        offset,
      );
    }
  }

  /** Behind the direct writes in flight over it; before the writes asked for after it. */
  read(buf: Buffer, offset: number): Promise<void> {
    if (this.window) return this.window.read(offset, offset + buf.length, () => this.readFrom(this.fd, buf, offset));
    return this.readFrom(this.fd, buf, offset);
  }

  readBulk(buf: Buffer, offset: number): Promise<void> {
    this.check(buf.length, offset);
    if (this.fd < 0) return this.readFrom(this.fd, buf, offset); // closed: fails as any read does
    const b = (this.bulk ??= new BulkReader(this.fd));
    const run = async (): Promise<void> => {
      const fd = b.direct(buf, offset);
      if (fd >= 0 && (await this.readDirect(b, fd, buf, offset))) return;
      return this.readFrom(b.buffered(), buf, offset);
    };
    return this.window ? this.window.read(offset, offset + buf.length, run) : run();
  }

  /** A read around the page cache; false when the file refused it (then read it buffered). */
  private async readDirect(b: BulkReader, fd: number, buf: Buffer, offset: number): Promise<boolean> {
    let done = 0;
    while (done < buf.length) {
      let n: number;
      try {
        n = await readAt(fd, buf, done, offset + done);
      } catch (e: any) {
        if (e.code !== 'EINVAL') this.fail('read', offset + done, e);
        b.refuseDirect();
        return false;
      }
      b.directReadBytes += n;
      if (n === 0) {
        buf.fill(0, done); // past EOF of a short file reads as zeroes
        return true;
      }
      done += n;
      if (done % DIRECT_ALIGN !== 0 && done < buf.length) {
        await this.readFrom(b.buffered(), buf.subarray(done), offset + done); // the file's unaligned end
        return true;
      }
    }
    return true;
  }

  /** Bytes bulk reads took around the page cache. */
  get directReadBytes(): number {
    return this.bulk?.directReadBytes ?? 0;
  }

  dataExtents(start: number, end: number): [number, number][] | null {
    this.check(end - start, start);
    return this.fd >= 0 ? dataExtents(this.fd, start, end) : null;
  }

  dropCache(): void {
    if (this.fd >= 0) dropCache(this.fd, 0, 0);
  }

  private async readFrom(fd: number, buf: Buffer, offset: number): Promise<void> {
    this.check(buf.length, offset);
    let done = 0;
    while (done < buf.length) {
      const n = await readAt(fd, buf, done, offset + done).catch((e) => this.fail('read', offset + done, e));
      if (n === 0) {
        buf.fill(0, done); // past EOF of a short file reads as zeroes
        return;
      }
      done += n;
    }
  }

  /** Callers ask landing() first: nothing may be in flight over the range. */
  writeSync(buf: Buffer, offset: number): void {
    this.check(buf.length, offset);
    assert(!this.window?.over(offset, offset + buf.length), 'a synchronous write waits for the direct writes under it');
    let done = 0;
    try {
      while (done < buf.length) done += fs.writeSync(this.fd, buf, done, buf.length - done, offset + done);
    } catch (e) {
      this.fail('write', offset + done, e as NodeJS.ErrnoException);
    }
  }

  /**
   * A direct write resolves once it is in flight (its buffer held from the pool until it lands;
   * a failure surfaces at the next flush) or, for a buffer not the pool's, once it landed. A
   * pool buffer over SYNC_WRITE_MAX that cannot go direct (O_DIRECT refused, misaligned) joins
   * the window too, as a page-cache copy: not awaited whole behind the writes in flight.
   */
  async write(buf: Buffer, offset: number): Promise<void> {
    this.check(buf.length, offset);
    const w = this.window;
    if (w && this.canDirect(buf, offset) && this.openDirect()) {
      if (!this.holds?.hold(buf)) return w.addLanded(offset, buf.length, () => this.writeDirect(buf, offset));
      const holds = this.holds;
      return w.add(offset, buf.length, () => this.writeDirect(buf, offset).finally(() => holds.give(buf)));
    }
    if (w && buf.length > SYNC_WRITE_MAX && this.holds?.hold(buf)) {
      const holds = this.holds;
      return w.add(offset, buf.length, () => this.writeBuffered(buf, offset).finally(() => holds.give(buf)));
    }
    const busy = w?.over(offset, offset + buf.length);
    if (busy) await busy;
    await this.writeBuffered(buf, offset);
  }

  private async writeBuffered(buf: Buffer, offset: number): Promise<void> {
    let done = 0;
    while (done < buf.length) {
      done += await writeAt(this.fd, buf, done, offset + done).catch((e) => this.fail('write', offset + done, e));
    }
  }

  private canDirect(buf: Buffer, offset: number): boolean {
    return (
      !this.directOff &&
      buf.length >= DIRECT_MIN &&
      buf.length % DIRECT_ALIGN === 0 &&
      offset % DIRECT_ALIGN === 0 &&
      misalign(buf, DIRECT_ALIGN) === 0
    );
  }

  /** The O_DIRECT descriptor, opened on first use; false when this file cannot take one (tmpfs). */
  private openDirect(): boolean {
    if (this.directFd === -1) {
      try {
        this.directFd = fs.openSync(`/proc/self/fd/${this.fd}`, fs.constants.O_WRONLY | fs.constants.O_DIRECT);
      } catch {
        this.directFd = -2; // tmpfs and others refuse O_DIRECT
        this.directOff = true;
      }
    }
    return !this.directOff;
  }

  /**
   * One write around the page cache, landed when it resolves. The kernel writes back and drops
   * any cached pages of the range first, so buffered reads and writes stay coherent with it;
   * fdatasync still makes it durable (a device cache flush). An alignment the device refuses
   * (EINVAL before any byte) is written buffered, and so is every write after it.
   */
  private async writeDirect(buf: Buffer, offset: number): Promise<void> {
    let done = 0;
    try {
      while (done < buf.length) done += await writeAt(this.directFd, buf, done, offset + done);
    } catch (e: any) {
      if (e.code !== 'EINVAL' || done > 0) this.fail('write', offset + done, e);
      this.directOff = true; // the descriptor stays open until close(): other writes may be on it
      return this.writeBuffered(buf, offset);
    }
    this.directBytes += buf.length;
  }

  async writev(parts: Buffer[], offset: number): Promise<void> {
    let len = 0;
    for (const p of parts) len += p.length;
    this.check(len, offset);
    const busy = this.window?.over(offset, offset + len);
    if (busy) await busy;
    let done = 0;
    while (parts.length) {
      const n = await new Promise<number>((res, rej) =>
        fs.writev(this.fd, parts, offset + done, (e, w) => (e ? rej(e) : res(w))),
      ).catch((e) => this.fail('write', offset + done, e));
      done += n;
      parts = skip(parts, n); // a short write: go on from where it stopped
    }
  }

  /** Drains the writes in flight first: their first failure fails the flush. */
  async flush(): Promise<void> {
    if (this.window) await this.window.drain(); // also a failure of writes that landed since the last flush
    return new Promise((res, rej) => fs.fdatasync(this.fd, (e) => (e ? rej(this.wrap('flush', 0, e)) : res())));
  }

  flushSync(): void {
    assert(!this.window?.writes, 'flushSync is for files without direct writes in flight (the agent)');
    try {
      fs.fdatasyncSync(this.fd);
    } catch (e) {
      this.fail('flush', 0, e as NodeJS.ErrnoException);
    }
  }

  async close(): Promise<void> {
    if (this.fd < 0) return;
    await this.window?.drain().catch(() => undefined); // what did not land was never flushed: not durable
    if (this.fd < 0) return;
    const fds = [this.fd, this.directFd, ...(this.bulk?.fds() ?? [])].filter((fd) => fd >= 0);
    this.fd = this.directFd = -1;
    this.bulk = null;
    await Promise.all(fds.map((fd) => new Promise<void>((res) => fs.close(fd, () => res()))));
  }

  private wrap(op: string, offset: number, e: NodeJS.ErrnoException): VolumeError {
    return new VolumeError(`${op} ${this.path} at ${offset}: ${e.code ?? e.message}`, this.path, offset, e.code);
  }
  private fail(op: string, offset: number, e: NodeJS.ErrnoException): never {
    throw this.wrap(op, offset, e);
  }
}

export class MemoryVolume implements BlockTarget {
  readonly data: Buffer;
  constructor(readonly sizeBytes: number) {
    this.data = Buffer.alloc(sizeBytes);
  }
  private check(len: number, offset: number): void {
    if (offset < 0 || offset + len > this.sizeBytes)
      throw new VolumeError(
        `IO [${offset}, ${offset + len}) outside memory volume (${this.sizeBytes} bytes)`,
        'memory',
        offset,
      );
  }
  async read(buf: Buffer, offset: number): Promise<void> {
    this.check(buf.length, offset);
    this.data.copy(buf, 0, offset, offset + buf.length);
  }
  async write(buf: Buffer, offset: number): Promise<void> {
    this.check(buf.length, offset);
    buf.copy(this.data, offset);
  }
  async flush(): Promise<void> {}
  async close(): Promise<void> {}
}
