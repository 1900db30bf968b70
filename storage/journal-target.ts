// The journal's capture filter in a recovery volume's stack: before a range of the volume is
// overwritten for the first time since the VM's last checkpoint, its current content (the
// before-image, widened to whole journal blocks) is appended to the VM's journal. The append
// is a page-cache write issued before the overwrite; flush() syncs the journal with the volume,
// so a group commit acks an overwrite only once its before-image is durable too. A range
// the known-zero map under it vouches for (never written on a replica this hub created) is
// recorded as a ZERO record: no read, no payload. On a remote volume (RBD) the read joins the
// volume's write window ahead of the overwrite, which is submitted only once it is recorded.
// A small write announced ahead (prepareWrite: the hub's session does it for every small write
// of a socket read before applying the first) has its record staged in the journal, written
// with the others of that read in one append; every overwrite through here writes what is
// staged first (flushStaged), so no record reaches the file after the overwrite it undoes.
import { isRbdName } from './rbd-volume';
import { adviseRandom } from './fileio';
import * as fs from 'node:fs';
import type { BlockTarget } from './volume';
import type { Journal } from './journal';
import { JOURNAL_BLOCK, MAX_PAYLOAD } from './journal-format';
import { KnownZeroMap, TrackedTarget } from './tracking';
import { BlockSet } from './block-set';
import { ForwardReadAhead } from './forward-read-ahead';
import { assert } from './assert';

/** The journal and volume index a recovery volume records into. */
export interface JournalBinding {
  journal: Journal;
  vol: number;
}

const SEEN_PAGES = 128; // pages of the seen set (4 KiB each, 128 MiB of volume); past them a write is recorded again
const RECORD_BYTES_MAX = MAX_PAYLOAD - (MAX_PAYLOAD % JOURNAL_BLOCK) - JOURNAL_BLOCK; // whole blocks, 1 MiB + 4 KiB
const SCRATCH_BYTES = 64 * 1024 + 2 * JOURNAL_BLOCK; // a synchronous (small) write, widened

export class JournalTarget implements BlockTarget {
  readonly writeSync?: (buf: Buffer, offset: number) => void;
  readonly writev?: (parts: Buffer[], offset: number) => Promise<void>;
  readonly readBulk?: (buf: Buffer, offset: number) => Promise<void>;
  readonly dataExtents?: (start: number, end: number) => [number, number][] | null;
  readonly dropCache?: () => void;
  readonly flushSync?: () => void;
  readonly landing?: (start: number, end: number) => Promise<void> | null;
  readonly writesFailed?: () => boolean;
  private bound: JournalBinding | null = null;
  private readFd = -1; // our own descriptor for before-images: reads the same page cache
  private closed = false;
  private readonly seen = new BlockSet(SEEN_PAGES); // blocks recorded in the current epoch
  private seenEpoch = -1;
  private scratch: Buffer | null = null;
  /** The change map under us that knows the zero regions of a fresh replica, if any. */
  private readonly zeros: KnownZeroMap | null;
  capturedBytes = 0;
  private readonly fill = (img: Buffer, offset: number): void => this.readBefore(img, offset);
  private readonly ahead: ForwardReadAhead;

  /** `resolve` names the journal once the volume's VM is known (null: not yet, record nothing). */
  constructor(
    private readonly next: BlockTarget,
    readonly path: string,
    private readonly resolve: () => JournalBinding | null,
  ) {
    if (next.writeSync) this.writeSync = (buf, offset) => this.syncWrite(buf, offset);
    if (next.writev) this.writev = (parts, offset) => this.gatheredWrite(parts, offset);
    if (next.readBulk) this.readBulk = (buf, offset) => next.readBulk!(buf, offset);
    if (next.dataExtents) this.dataExtents = (start, end) => next.dataExtents!(start, end);
    if (next.dropCache) this.dropCache = () => next.dropCache!();
    if (next.flushSync) this.flushSync = () => next.flushSync!();
    if (next.landing) this.landing = (start, end) => next.landing!(start, end); // block-aligned: JOURNAL_BLOCK
    if (next.writesFailed) this.writesFailed = () => next.writesFailed!();
    const below = next instanceof TrackedTarget ? next.changes : null;
    this.zeros = below instanceof KnownZeroMap ? below : null;
    this.ahead = new ForwardReadAhead(
      () => this.fd(),
      () => next.sizeBytes,
    );
  }

  get sizeBytes(): number {
    return this.next.sizeBytes;
  }

  /** The file's bytes written around the page cache (a statistic read through the stack). */
  get directBytes(): number | undefined {
    return (this.next as { directBytes?: number }).directBytes;
  }

  get binding(): JournalBinding | null {
    return this.bound ?? (this.bound = this.resolve());
  }

  read(buf: Buffer, offset: number): Promise<void> {
    return this.next.read(buf, offset);
  }

  async write(buf: Buffer, offset: number): Promise<void> {
    if (this.next.readThen) this.captureAhead(offset, offset + buf.length);
    else await this.capture(offset, offset + buf.length);
    this.bound?.journal.flushStaged(); // records staged for these blocks (prepareWrite) go first
    await this.next.write(buf, offset);
  }

  /**
   * A synchronous write of [start, end) follows in this event-loop turn (the session applies a
   * read's small writes together): its before-image (or ZERO record) is staged now, and written
   * with the others staged in one append before the first of those overwrites. Reading it ahead
   * of the turn's earlier writes is safe: a block one of them changes was recorded by it first,
   * and a view takes the oldest record of a block after its point (journal-view.ts).
   */
  prepareWrite(start: number, end: number): void {
    if (this.closed || !this.next.writeSync || end - start > SCRATCH_BYTES - 2 * JOURNAL_BLOCK) return;
    const widened = Math.min(Math.ceil(end / JOURNAL_BLOCK) * JOURNAL_BLOCK, this.sizeBytes);
    if (this.next.landing?.(start - (start % JOURNAL_BLOCK), widened)) return; // the write takes the queue
    const r = this.range(start, end);
    if (!r) return;
    const [a, b, j] = r;
    try {
      if (this.zeros?.covers(a, b)) j.journal.stageZero(j.vol, a, b - a);
      else assert(j.journal.stageBefore(j.vol, a, b - a, this.fill), 'a small before-image fits the stage');
      this.capturedBytes += b - a;
    } catch (e) {
      j.journal.lostHistory(e as Error); // replication goes on without the past
    }
  }

  /**
   * The journal and the volume together: both durable before the group commit acks. Not one
   * after the other: that order never kept an overwrite from reaching the disk ahead of its
   * before-image (the kernel writes volume pages back on its own), so a power cut drops every
   * point anyway (journal-mark.ts), and a kill -9 keeps the page cache. Side by side, the two
   * fdatasyncs share one filesystem commit and one device flush instead of two in a row.
   */
  async flush(): Promise<void> {
    const b = this.bound;
    const journal = b?.journal.sync().catch((e: Error) => b.journal.lostHistory(e)); // never fails the volume
    await Promise.all([journal, this.next.flush()]);
  }

  async close(): Promise<void> {
    this.closed = true; // a late write fails, and never reopens the before-image descriptor
    if (this.readFd >= 0) fs.closeSync(this.readFd);
    this.readFd = -1;
    await this.next.close();
  }

  private syncWrite(buf: Buffer, offset: number): void {
    const r = this.range(offset, offset + buf.length);
    if (r) {
      const [a, b, j] = r;
      const n = b - a;
      if (this.zeros?.covers(a, b)) this.recordZero(j, a, n);
      else {
        const img =
          n <= SCRATCH_BYTES
            ? (this.scratch ??= Buffer.allocUnsafeSlow(SCRATCH_BYTES)).subarray(0, n)
            : Buffer.allocUnsafe(n);
        try {
          this.readBefore(img, a);
          this.record(j, a, img);
        } catch (e) {
          j.journal.lostHistory(e as Error);
        }
      }
    }
    this.bound?.journal.flushStaged(); // records staged for these blocks (prepareWrite) go first
    this.next.writeSync!(buf, offset);
  }

  /** [a, a + n) was never written since the replica was created: a ZERO record, nothing read. */
  private recordZero(j: JournalBinding, a: number, n: number): void {
    try {
      j.journal.appendZero(j.vol, a, n);
      this.capturedBytes += n;
    } catch (e) {
      j.journal.lostHistory(e as Error);
    }
  }

  private async gatheredWrite(parts: Buffer[], offset: number): Promise<void> {
    let n = 0;
    for (const p of parts) n += p.length;
    await this.capture(offset, offset + n);
    this.bound?.journal.flushStaged(); // records staged for these blocks (prepareWrite) go first
    await this.next.writev!(parts, offset);
  }

  private async capture(start: number, end: number): Promise<void> {
    const r = this.range(start, end);
    if (!r) return;
    const [a, b, j] = r;
    if (this.zeros?.covers(a, b)) return this.recordZero(j, a, b - a);
    const img = Buffer.allocUnsafe(b - a);
    const busy = this.next.landing?.(a, b); // the before-image is what the writes in flight leave
    if (busy) await busy;
    if (this.closed) throw new Error(`write to ${this.path} after it was closed`); // closed meanwhile: not lost history
    try {
      // A remote image without readThen is read through its own target; a file through our descriptor.
      if (isRbdName(this.path)) await this.next.read(img, a);
      else {
        this.ahead.reading(a, b);
        await new Promise<void>((res, rej) =>
          fs.read(this.fd(), img, 0, img.length, a, (e, got) => (e ? rej(e) : (img.fill(0, got), res()))),
        );
      }
      this.record(j, a, img);
    } catch (e) {
      j.journal.lostHistory(e as Error); // replication goes on without the past
    }
  }

  /**
   * A remote volume (RBD): the before-image is read in the volume's window, ahead of the write
   * that follows it, and recorded before that write is submitted; the apply queue goes on. The
   * journal counts it until then, so that no point is appended ahead of its record.
   */
  private captureAhead(start: number, end: number): void {
    const r = this.range(start, end);
    if (!r) return;
    const [a, b, j] = r;
    if (this.zeros?.covers(a, b)) return this.recordZero(j, a, b - a);
    const img = Buffer.allocUnsafe(b - a);
    j.journal.captureBegin();
    this.next.readThen!(img, a, (e) => {
      try {
        if (e)
          j.journal.lostHistory(e); // replication goes on without the past
        else this.record(j, a, img);
      } catch (e2) {
        j.journal.lostHistory(e2 as Error);
      } finally {
        j.journal.captureEnd();
      }
    });
  }

  /** A writeSync of [start, end) now would read a before-image first (not only a ZERO record, or nothing). */
  readsBefore(start: number, end: number): boolean {
    const j = this.binding;
    if (!j || end <= start) return false;
    const first = Math.floor(start / JOURNAL_BLOCK),
      last = Math.floor((end - 1) / JOURNAL_BLOCK);
    if (this.seenEpoch === j.journal.epoch && this.allSeen(first, last)) return false;
    return !this.zeros?.covers(first * JOURNAL_BLOCK, Math.min((last + 1) * JOURNAL_BLOCK, this.sizeBytes));
  }

  /** The widened range to record, or null (no journal yet, or every block recorded this epoch). */
  private range(start: number, end: number): [number, number, JournalBinding] | null {
    // A write after close() fails here, ahead of any capture: its before-image read failing
    // inside one would count as lost history and drop every point of the VM.
    if (this.closed) throw new Error(`write to ${this.path} after it was closed`);
    const j = this.binding;
    if (!j || end <= start) return null;
    if (this.seenEpoch !== j.journal.epoch) {
      this.seen.clear();
      this.seenEpoch = j.journal.epoch;
    }
    const first = Math.floor(start / JOURNAL_BLOCK),
      last = Math.floor((end - 1) / JOURNAL_BLOCK);
    if (this.allSeen(first, last)) return null;
    this.seen.add(first, last); // or not remembered: full
    return [first * JOURNAL_BLOCK, Math.min((last + 1) * JOURNAL_BLOCK, this.sizeBytes), j];
  }

  /** Every journal block in [first, last] was recorded in the epoch `seen` is of. */
  private allSeen(first: number, last: number): boolean {
    return this.seen.has(first, last);
  }

  private record(j: JournalBinding, offset: number, img: Buffer): void {
    // a record holds at most MAX_PAYLOAD: a larger write (a 2 MiB NBD write, a resync read) is split
    for (let o = 0; o < img.length; o += RECORD_BYTES_MAX)
      j.journal.appendBefore(j.vol, offset + o, img.subarray(o, Math.min(img.length, o + RECORD_BYTES_MAX)));
    this.capturedBytes += img.length;
  }

  private readBefore(img: Buffer, offset: number): void {
    this.ahead.reading(offset, offset + img.length);
    const got = fs.readSync(this.fd(), img, 0, img.length, offset);
    if (got < img.length) img.fill(0, got);
  }

  private fd(): number {
    if (this.closed) throw new Error(`before-image read of ${this.path} after it was closed`);
    if (this.readFd < 0) {
      this.readFd = fs.openSync(this.path, 'r');
      adviseRandom(this.readFd); // a 4 KiB before-image read brings in that page, no readahead around it
    }
    return this.readFd;
  }
}
