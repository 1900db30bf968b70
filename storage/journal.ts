// A VM's journal on the hub: an undo log of before-images in append-only segments, and the
// consistent points (checkpoints) of the VM's write stream between them. Owns the segment files,
// the volume table, the in-memory list of points (bounded), pins of readers, and retention.
// Volume content at point C = the present volume overlaid with, per block, the oldest
// before-image recorded after C (storage/journal-view.ts). Records are written with one pwrite
// each (no user-space buffer: a kill -9 loses nothing appended), or staged (a read's small
// writes: stageBefore, stageZero) and written together by flushStaged(), which the capture
// filter calls before each overwrite and every append, sync and close calls first; sync()
// makes them durable (journal-sync.ts). The points live in journal-points.ts, the volume table
// in journal-volumes.ts, the scan at open in journal-recover.ts, the staged records in
// journal-stage.ts.
// Over 450 lines (under 400 of code): appends, staging, rolls, retention, scan and close all move
// or read the open segment's offset and the segment list, which this class owns alone; splitting
// them would hand that state to two owners. The next seam, if it grows: retention (enforce,
// pins, deleteOldest) as a journal-retention.ts asked through a narrow segment-list interface.
import * as fs from 'node:fs';
import * as path from 'node:path';
import {
  CheckpointKind,
  HEADER_BYTES,
  KINDS,
  MAX_PAYLOAD,
  RecordHeader,
  RecordType,
  decodeHeader,
  encodeHeader,
  offsetOf,
  position,
  segmentName,
  segmentNumber,
  segmentOf,
  ZERO_PAYLOAD_BYTES,
} from './journal-format';
import { checkMark, writeMark } from './journal-mark';
import { RecordStage } from './journal-stage';
import { loadVolumeTable, syncDir, writeVolumeTable } from './journal-volumes';
import { recoverSegment } from './journal-recover';
import { JournalSync } from './journal-sync';

import { Checkpoint, PointList } from './journal-points';
import { assert } from './assert';
export type { Checkpoint } from './journal-points';

export interface JournalOptions {
  /** A segment is closed (and synced) once it holds this many bytes. */
  segmentBytes: number;
  /** Points kept in memory at most; beyond it the oldest go (counted as drops). */
  maxPoints?: number;
  /** Told of a torn tail cut off, and similar repairs at open. */
  warn?: (fields: object, msg: string) => void;
  /**
   * This boot of the machine (storage/journal-mark.ts). Given, the journal is marked open under
   * it, and a journal left open under another boot (a power cut) drops every point at open.
   */
  bootId?: string;
}

/**
 * A before-image was appended: volume, its byte range and where its bytes are in the journal
 * (ZERO_POS: the range was zero, and the journal holds no bytes for it).
 */
export type BeforeListener = (vol: number, offset: number, length: number, dataPos: number) => void;

interface Segment {
  n: number;
  fd: number;
  bytes: number;
}

/** The data position of a before-image that was all zero (a ZERO record: no bytes to read; the stage's -1 too). */
export const ZERO_POS = -1;
const MAX_POINTS = 100_000;
const EMPTY = Buffer.alloc(0);
const SCAN_WINDOW_BYTES = 64 * 1024;
export { EARLY_SYNC_BYTES } from './journal-sync';

export class Journal {
  private readonly segments: Segment[] = [];
  private readonly volumeNames: string[] = [];
  private readonly pts: PointList;
  /** Bumped at every point: a volume's first write of an epoch records its before-image. */
  epoch = 0;
  /** Before-image bytes appended since the last point (writes are flowing). */
  capturedSincePoint = 0;
  /** Found open across a power cut at open: when, under which boot it was open, points dropped. */
  powerLoss: { at: number; bootId: string | null; dropped: number } | null = null;
  private readonly pins = new Map<number, number>(); // position -> readers holding it
  private readonly listeners = new Set<BeforeListener>();
  private capturing = 0; // before-images being read (a remote volume): a point waits for them
  private capturedWaiters: (() => void)[] = [];
  private readonly syncs: JournalSync;
  private readonly header = Buffer.alloc(HEADER_BYTES);
  private readonly zeroLength = Buffer.alloc(ZERO_PAYLOAD_BYTES); // a ZERO record's payload, reused
  private readonly stage = new RecordStage(); // records captured ahead of their overwrites, not yet written

  private constructor(
    readonly dir: string,
    private readonly opts: JournalOptions,
  ) {
    this.pts = new PointList(opts.maxPoints ?? MAX_POINTS);
    const tail = () => (this.segments.length ? { fd: this.current.fd, end: this.end } : null);
    this.syncs = new JournalSync(dir, tail, () => this.flushStaged());
    assert(opts.segmentBytes >= 1 << 20 && opts.segmentBytes < 2 ** 32, 'a segment is 1 MiB..4 GiB');
  }

  /** Open (or create) the journal in `dir`: segments scanned, a torn tail cut off. */
  static open(dir: string, opts: JournalOptions): Journal {
    fs.mkdirSync(dir, { recursive: true });
    const j = new Journal(dir, opts);
    j.volumeNames.push(...loadVolumeTable(dir));
    const names = fs
      .readdirSync(dir)
      .map(segmentNumber)
      .filter((n): n is number => n !== null)
      .sort((a, b) => a - b);
    const mark = opts.bootId === undefined ? null : checkMark(dir, opts.bootId);
    for (const [i, n] of names.entries()) j.recover(n, i === names.length - 1);
    if (mark?.powerLoss) j.discardAll(mark.recordedBootId);
    if (j.segments.length === 0) j.newSegment(1);
    if (opts.bootId !== undefined) writeMark(dir, opts.bootId, false); // before the first append of this run
    return j;
  }

  /** The index of a volume in this journal's table, added (durably) the first time. */
  volumeIndex(name: string): number {
    let i = this.volumeNames.indexOf(name);
    if (i >= 0) return i;
    i = this.volumeNames.push(name) - 1;
    writeVolumeTable(this.dir, this.volumeNames);
    return i;
  }

  volumeName(i: number): string | undefined {
    return this.volumeNames[i];
  }

  /** Append the before-image of [offset, offset + data.length) of volume `vol`; its data position. */
  appendBefore(vol: number, offset: number, data: Buffer): number {
    assert(data.length <= MAX_PAYLOAD, `a before-image record holds at most ${MAX_PAYLOAD} bytes`);
    const at = this.append(
      { type: RecordType.BEFORE, sub: vol, arg: offset, time: Date.now(), payloadBytes: data.length },
      data,
    );
    this.capturedSincePoint += data.length;
    this.syncs.soon();
    for (const l of this.listeners) l(vol, offset, data.length, at);
    return at;
  }

  /**
   * [offset, offset + length) of volume `vol` was zero before this overwrite: a 36-byte record in
   * place of the zeros (no read of the volume, no payload to write or sync).
   */
  appendZero(vol: number, offset: number, length: number): void {
    assert(length > 0 && length <= 2 ** 32 - 1, 'a zero range fits a u32');
    this.zeroLength.writeUInt32LE(length, 0);
    this.append(
      { type: RecordType.ZERO, sub: vol, arg: offset, time: Date.now(), payloadBytes: ZERO_PAYLOAD_BYTES },
      this.zeroLength,
    );
    this.capturedSincePoint += length;
    this.syncs.soon();
    for (const l of this.listeners) l(vol, offset, length, ZERO_POS);
  }

  /**
   * Stage the before-image of [offset, offset + n) of volume `vol`, which `fill` reads into the
   * stage: it is written with the other staged records by flushStaged(), which must come before
   * the overwrite (the capture filter's). False (nothing staged): too large, append it instead.
   */
  stageBefore(vol: number, offset: number, n: number, fill: (img: Buffer, offset: number) => void): boolean {
    if (!RecordStage.holds(n)) return false;
    if (!this.stage.fits(n)) this.flushStaged();
    fill(this.stage.room(n), offset); // throws: nothing staged
    this.stage.addBefore(vol, offset, n);
    this.capturedSincePoint += n;
    return true;
  }

  /** Stage a ZERO record ([offset, offset + length) of `vol` was zero), as stageBefore. */
  stageZero(vol: number, offset: number, length: number): void {
    assert(length > 0 && length <= 2 ** 32 - 1, 'a zero range fits a u32');
    if (!this.stage.fits(ZERO_PAYLOAD_BYTES)) this.flushStaged();
    this.stage.addZero(vol, offset, length);
    this.capturedSincePoint += length;
  }

  /**
   * Write the staged records at the end of the journal, one pwrite, and tell the listeners. A
   * failed write loses the history (as a failed append does); replication goes on.
   */
  flushStaged(): void {
    const n = this.stage.bytes;
    if (n === 0) return;
    if (this.segments.length === 0) return this.stage.written(null, this.listeners); // closed
    let at: number | null = null;
    try {
      if (this.current.bytes + n > this.opts.segmentBytes) this.roll();
      const s = this.current;
      const w = fs.writeSync(s.fd, this.stage.view(), 0, n, s.bytes);
      if (w !== n) throw new Error(`journal ${this.dir}: short append of staged records (${w} of ${n} bytes)`);
      at = position(s.n, s.bytes);
      s.bytes += n;
      this.syncs.appended(n);
    } catch (e) {
      this.lostHistory(e as Error);
    } finally {
      this.stage.written(at, this.listeners);
    }
    this.syncs.soon();
  }

  /**
   * A before-image is being read for a write applied now (journal-target.ts, a remote volume);
   * it is appended (or the history lost) before captureEnd(). No point may be taken meanwhile:
   * the record belongs before it. At most one per write in the volume's window (32).
   */
  captureBegin(): void {
    this.capturing++;
  }

  captureEnd(): void {
    assert(this.capturing > 0, 'a capture ends once');
    if (--this.capturing === 0) for (const w of this.capturedWaiters.splice(0)) w();
  }

  /** Before-images still being read: a point now would come before their records. */
  get capturesPending(): number {
    return this.capturing;
  }

  /** Resolves once every before-image being read has been recorded. */
  captured(): Promise<void> {
    if (this.capturing === 0) return Promise.resolve();
    return new Promise((r) => this.capturedWaiters.push(r));
  }

  /** Append a consistent point: everything recorded after it is newer than it. */
  appendCheckpoint(kind: CheckpointKind, label = '', time = Date.now()): Checkpoint {
    assert(this.capturing === 0, 'no before-image of a write before the point is still being read');
    const id = this.pts.newId();
    const payload = Buffer.from(label.slice(0, 256), 'utf8');
    const at = this.append(
      { type: RecordType.CHECKPOINT, sub: KINDS.indexOf(kind), arg: id, time, payloadBytes: payload.length },
      payload,
    );
    const p: Checkpoint = { id, time, kind, pos: at + payload.length };
    if (label) p.label = label;
    this.pts.add(p);
    this.epoch++;
    this.capturedSincePoint = 0;
    return p;
  }

  /**
   * Re-mark an existing point (an encryption alarm's last clean point before the spike): a
   * CHECKPOINT record naming an id already known changes that point's kind and label.
   */
  remark(id: number, kind: CheckpointKind, label: string): Checkpoint | null {
    const p = this.pts.find(id);
    if (!p) return null;
    const payload = Buffer.from(label.slice(0, 256), 'utf8');
    this.append(
      { type: RecordType.CHECKPOINT, sub: KINDS.indexOf(kind), arg: id, time: p.time, payloadBytes: payload.length },
      payload,
    );
    p.kind = kind;
    if (label) p.label = label;
    return p;
  }

  /**
   * A before-image could not be recorded (a full or failing journal disk): every point is lost,
   * since each needs all records after it. Replication goes on; the next point starts afresh.
   */
  lostHistory(e: Error): void {
    const n = this.pts.length;
    this.pts.dropOldest(n);
    this.epoch++;
    this.capturedSincePoint = 0;
    this.opts.warn?.(
      { dir: this.dir, dropped: n, cause: e.message },
      'journal: a before-image was not recorded; every point dropped',
    );
  }

  /**
   * The volumes were rolled back to point `id` (failover --at): every newer point is dropped,
   * durably (a DROP record, synced). The records after `id` stay: they still hold, for every
   * block changed since, its content at `id` and older points. Returns the points dropped.
   */
  dropAfter(id: number): number {
    const k = this.pts.all.findIndex((p) => p.id === id);
    assert(k >= 0, `point ${id} is in the journal`);
    const n = this.pts.length - k - 1;
    this.append({ type: RecordType.DROP, sub: 0, arg: id, time: Date.now(), payloadBytes: 0 }, EMPTY);
    fs.fdatasyncSync(this.current.fd);
    this.pts.dropNewer(id);
    return n;
  }

  /** Every record appended so far is durable once this resolves (journal-sync.ts). */
  sync(): Promise<void> {
    return this.syncs.sync();
  }

  /** The points, oldest first. */
  points(): readonly Checkpoint[] {
    return this.pts.all;
  }

  get bytes(): number {
    let n = 0;
    for (const s of this.segments) n += s.bytes;
    return n;
  }

  /** Where the next record goes. */
  get end(): number {
    const s = this.current;
    return position(s.n, s.bytes);
  }

  /**
   * Call `fn` for each record from `from` to the current end, in order (headers only; a ZERO
   * record's `zeroBytes`, its range's length, read with it). Headers
   * are read through a 64 KiB window: small records cost one read per window, not one each (a
   * view of a 10-minute-old point scans hundreds of thousands of them).
   */
  scan(from: number, fn: (h: RecordHeader, dataPos: number, zeroBytes: number) => void): void {
    // Staged records stay staged: a view notes them when they are written, after every record
    // scanned here (the first record of a block after its point wins: they must come in order).
    const win = Buffer.allocUnsafe(SCAN_WINDOW_BYTES);
    for (const s of this.segments) {
      if (s.n < segmentOf(from)) continue;
      let off = s.n === segmentOf(from) ? offsetOf(from) : 0;
      let at = 0,
        got = 0; // the window holds the segment's bytes [at, at + got)
      while (off + HEADER_BYTES <= s.bytes) {
        // the window holds the header and a ZERO record's 4-byte payload after it
        const need = HEADER_BYTES + ZERO_PAYLOAD_BYTES;
        if (off < at || Math.min(off + need, s.bytes) > at + got) {
          at = off;
          got = fs.readSync(s.fd, win, 0, Math.min(win.length, s.bytes - off), off);
          assert(got >= HEADER_BYTES, `journal ${this.dir}: segment ${s.n} is shorter than its records`);
        }
        const h = decodeHeader(win.subarray(off - at, off - at + HEADER_BYTES));
        assert(h !== null, 'a record inside the journal has a header');
        const zero = h.type === RecordType.ZERO ? win.readUInt32LE(off - at + HEADER_BYTES) : 0;
        fn(h, position(s.n, off + HEADER_BYTES), zero);
        off += HEADER_BYTES + h.payloadBytes;
      }
    }
  }

  /** Read journal bytes at a data position (inside one record). */
  read(buf: Buffer, pos: number): Promise<void> {
    const s = this.segment(segmentOf(pos));
    return new Promise((res, rej) =>
      fs.read(s.fd, buf, 0, buf.length, offsetOf(pos), (e, n) =>
        e ? rej(e) : n === buf.length ? res() : rej(new Error(`journal ${this.dir}: short read at ${pos}`)),
      ),
    );
  }

  onBefore(l: BeforeListener): () => void {
    this.listeners.add(l);
    return () => this.listeners.delete(l);
  }

  /** Keep every segment from `pos` on until the returned function is called (a reader uses them). */
  pin(pos: number): () => void {
    this.pins.set(pos, (this.pins.get(pos) ?? 0) + 1);
    let done = false;
    return () => {
      if (done) return;
      done = true;
      const n = this.pins.get(pos)! - 1;
      if (n) this.pins.set(pos, n);
      else this.pins.delete(pos);
    };
  }

  /**
   * Retention: drop points older than `retentionMs` (never the newest: it may be the last
   * consistent point before a resync), then the oldest segments while over `maxBytes`, then
   * segments no point needs. Never blocks appends. Returns the points dropped.
   */
  enforce(now: number, retentionMs: number, maxBytes: number): number {
    let dropped = 0;
    dropped += this.pts.dropOlderThan(now, retentionMs);
    while (this.segments.length > 1 && this.bytes > maxBytes && !this.pinned(this.segments[0].n)) {
      this.deleteOldest();
      dropped += this.pts.dropBefore(position(this.segments[0].n, 0));
    }
    const keepFrom = this.pts.length ? segmentOf(this.pts.all[0].pos) : this.current.n;
    while (this.segments.length > 1 && this.segments[0].n < keepFrom && !this.pinned(this.segments[0].n))
      this.deleteOldest();
    return dropped;
  }

  /** Close; with a boot id, every record is made durable first and the journal marked clean. */
  close(): void {
    this.flushStaged();
    if (this.opts.bootId !== undefined && this.segments.length) {
      fs.fdatasyncSync(this.current.fd); // earlier segments were synced when closed
      writeMark(this.dir, this.opts.bootId, true);
    }
    for (const s of this.segments) fs.closeSync(s.fd);
    this.segments.length = 0;
  }

  // ---- internals ----

  private get current(): Segment {
    return this.segments[this.segments.length - 1];
  }

  /**
   * After a power cut no point can be proven (each needs every record after it, and the last
   * ones may not have reached the disk ahead of the overwrites they undo): every segment goes,
   * and the journal starts afresh in the next segment number. Ids keep counting up.
   */
  private discardAll(bootId: string | null): void {
    const n = this.pts.length;
    const next = this.segments.length ? this.current.n + 1 : 1;
    while (this.segments.length) this.deleteOldest();
    this.pts.dropOldest(n);
    this.powerLoss = { at: Date.now(), bootId, dropped: n };
    this.epoch++;
    this.capturedSincePoint = 0;
    this.newSegment(next);
  }

  private segment(n: number): Segment {
    const s = this.segments.find((x) => x.n === n);
    if (!s) throw new Error(`journal ${this.dir}: segment ${n} was dropped`);
    return s;
  }

  private append(h: RecordHeader, payload: Buffer): number {
    this.flushStaged(); // records stay in the order they were captured
    if (this.current.bytes + HEADER_BYTES + payload.length > this.opts.segmentBytes) this.roll();
    const s = this.current;
    encodeHeader(this.header, h, payload);
    // An empty payload (a point without a label, a DROP) goes as the header alone: libuv writes a
    // zero-length buffer left in a vector with a system call of its own, one more per point.
    const n = payload.length
      ? fs.writevSync(s.fd, [this.header, payload], s.bytes)
      : fs.writeSync(s.fd, this.header, 0, HEADER_BYTES, s.bytes);
    if (n !== HEADER_BYTES + payload.length) throw new Error(`journal ${this.dir}: short append (${n} bytes)`);
    const at = position(s.n, s.bytes + HEADER_BYTES);
    s.bytes += n;
    this.syncs.appended(n);
    return at;
  }

  /** Close the current segment durably and start the next: only the last segment can be torn. */
  private roll(): void {
    fs.fdatasyncSync(this.current.fd);
    this.newSegment(this.current.n + 1);
  }

  private newSegment(n: number): void {
    const fd = fs.openSync(path.join(this.dir, segmentName(n)), 'w+');
    this.segments.push({ n, fd, bytes: 0 });
    syncDir(this.dir);
  }

  /** Walk segment `n`'s records (journal-recover.ts): its points and drops, a torn tail cut off. */
  private recover(n: number, last: boolean): void {
    const file = path.join(this.dir, segmentName(n));
    const seg = recoverSegment(
      file,
      n,
      last,
      (h, payload, pos) => {
        if (h.type === RecordType.DROP) return this.pts.dropNewer(h.arg);
        this.pts.recover(h.arg, h.time, KINDS[h.sub], payload.length ? payload.toString('utf8') : '', pos);
      },
      this.opts.warn,
    );
    this.segments.push({ n, ...seg });
  }

  /** Points dropped oldest first (retention, size cap, lost history). */
  get drops(): number {
    return this.pts.drops;
  }

  private pinned(n: number): boolean {
    for (const p of this.pins.keys()) if (segmentOf(p) <= n) return true;
    return false;
  }

  private deleteOldest(): void {
    const s = this.segments.shift()!;
    fs.closeSync(s.fd);
    fs.unlinkSync(path.join(this.dir, segmentName(s.n)));
  }
}
