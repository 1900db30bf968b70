// The power-loss simulation's recorder, under the storage layer: a file that remembers every
// write since its last completed fdatasync. survive() rebuilds what a power cut may leave: every
// write before the last completed sync, plus any subset of the later ones, at 4 KiB page
// granularity (a page lands whole or not at all, each independently, as a disk without
// atomic-write guarantees larger than a page may do). RecordedLogFile puts it under a DirtyLog
// (storage/log-file.ts's seam); RecordedImage under the agent as its image (a BlockTarget).
import type { LogFile } from '../../storage/log-file';
import type { BlockTarget } from '../../storage/volume';
import type { Rng } from './prng';

export const PL_PAGE = 4096;
/** Writes remembered between two syncs; a simulation beyond this is a test bug. */
const MAX_PENDING = 1 << 16;

/** How a cut treats the writes after the last sync: all lost, all landed, or a random subset. */
export type Survival = 'none' | 'all' | 'random';

export class RecordedFile {
  /** What the running process sees. */
  data: Buffer;
  /** What survives a cut for sure: the content as of the last completed sync. */
  private durable: Buffer;
  private pending: { seq: number; pos: number; data: Buffer }[] = [];
  private seq = 0;
  /** Counts for the report: syncs, writes, and of the writes at the cut, how many pages landed. */
  readonly stats = { syncs: 0, writes: 0, cutPending: 0, cutLanded: 0 };

  constructor(initial: Buffer) {
    this.data = Buffer.from(initial);
    this.durable = Buffer.from(initial);
  }

  write(buf: Buffer, pos: number): void {
    if (this.pending.length >= MAX_PENDING) throw new Error(`power-loss recorder: over ${MAX_PENDING} unsynced writes`);
    if (pos + buf.length > this.data.length) throw new RangeError(`write [${pos}, ${pos + buf.length}) past the end`);
    buf.copy(this.data, pos);
    this.pending.push({ seq: ++this.seq, pos, data: Buffer.from(buf) });
    this.stats.writes++;
  }

  read(buf: Buffer, pos: number): number {
    const n = Math.max(0, Math.min(buf.length, this.data.length - pos));
    this.data.copy(buf, 0, pos, pos + n);
    return n;
  }

  /** Sizes are metadata, journaled by the file system: durable at once. */
  truncate(length: number): void {
    const resize = (b: Buffer) => {
      const n = Buffer.alloc(length);
      b.copy(n, 0, 0, Math.min(length, b.length));
      return n;
    };
    this.data = resize(this.data);
    this.durable = resize(this.durable);
    this.pending = this.pending.filter((w) => w.pos + w.data.length <= length);
  }

  sync(): void {
    this.syncThrough(this.seq);
  }

  /** Where an asynchronous fdatasync starts: it covers the writes completed before this point only. */
  syncPoint(): number {
    return this.seq;
  }

  syncThrough(seq: number): void {
    for (const w of this.pending) if (w.seq <= seq) w.data.copy(this.durable, w.pos);
    this.pending = this.pending.filter((w) => w.seq > seq);
    this.stats.syncs++;
  }

  /** The file after a power cut now. */
  survive(how: Survival, rng: Rng): Buffer {
    const out = Buffer.from(this.durable);
    for (const w of this.pending) {
      // Split at page boundaries of the file: each piece lands or not.
      for (let a = w.pos; a < w.pos + w.data.length;) {
        const b = Math.min(w.pos + w.data.length, (Math.floor(a / PL_PAGE) + 1) * PL_PAGE);
        this.stats.cutPending++;
        if (how === 'all' || (how === 'random' && rng.int(2) === 1)) {
          w.data.copy(out, a, a - w.pos, b - w.pos);
          this.stats.cutLanded++;
        }
        a = b;
      }
    }
    return out;
  }
}

export class RecordedLogFile implements LogFile {
  constructor(readonly f: RecordedFile) {}
  read(buf: Buffer, pos: number): number {
    return this.f.read(buf, pos);
  }
  write(buf: Buffer, pos: number): void {
    this.f.write(buf, pos);
  }
  truncate(length: number): void {
    this.f.truncate(length);
  }
  sync(): void {
    this.f.sync();
  }
  close(): void {}
}

/** An image whose writes land in the page cache (the recorder) and whose flushes are fdatasync. */
export class RecordedImage implements BlockTarget {
  constructor(readonly f: RecordedFile) {}
  get sizeBytes(): number {
    return this.f.data.length;
  }
  async read(buf: Buffer, offset: number): Promise<void> {
    this.f.read(buf, offset);
  }
  writeSync(buf: Buffer, offset: number): void {
    this.f.write(buf, offset);
  }
  async write(buf: Buffer, offset: number): Promise<void> {
    await Promise.resolve(); // lands a turn later, as a threadpool write does
    this.f.write(buf, offset);
  }
  async flush(): Promise<void> {
    const upTo = this.f.syncPoint(); // writes landing while it runs are not covered
    await Promise.resolve();
    this.f.syncThrough(upTo);
  }
  flushSync(): void {
    this.f.sync();
  }
  async close(): Promise<void> {}
}
