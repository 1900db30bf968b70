// The sync engine of one agent session: remote reads of dirty regions (issue, answer, retry),
// which regions have a read in flight and which of those were overwritten meanwhile, the sweep
// cursor, the agent's dirty report, and when a volume has converged. It sends on a link it is
// given and knows nothing of the session.
import {
  Cap,
  ErrorCode,
  SECTOR,
  IO_OK,
  IO_ZEROES,
  IO_SPARSE,
  DIRTY_FINAL,
  ProtocolError,
  decodeSparse,
  SparsePiece,
  encodeRemoteIoReqHead,
  encodeDirtyReportAck,
} from '../../protocol';
import type { RemoteIoRes, DirtyReport } from '../../protocol';
import type { GuardedTarget } from '../../storage/overlay';
import { SYNC_WRITE_MAX } from '../../storage/volume';
import type { DirtyBitmap } from '../../storage/bitmap';
import type { Logger } from '../log';
import { assert } from '../assert';
import type { Replica } from './replica';

/** Where the engine sends: a Link (sealing, caps) satisfies it. */
export interface SyncLink {
  send(bufs: Buffer[]): void;
  has(cap: number): boolean;
}

export interface SyncConfig {
  maxInflightReads: number; // remote reads in flight per session
  maxReadBytes: number; // largest remote read
}

export interface InflightRead {
  reqId: number;
  sync: VolumeSync;
  first: number; // first region
  last: number; // last region (inclusive)
  touched: Set<number>; // regions written after the read was issued: their read data is stale
}

const SYNC_RUN_MAX = 256 * 1024;
const RETRY_MS = 1000; // back-off after a failed remote read or recovery volume write

/** One attached volume: its reads in flight and its place in the sweep. */
export class VolumeSync {
  readonly inflight = new Map<number, InflightRead>();
  readonly inflightRegions = new Set<number>();
  awaitingReport: boolean; // agent's dirty-extent hand-over not complete yet
  retryAt = 0; // after a failed remote read, back off until this time (ms)
  /** Set while a verify runs (verify.ts): told of every touch, as reads in flight are. */
  watch: ((first: number, last: number) => void) | null = null;

  constructor(
    readonly replica: Replica,
    readonly volumeId: number,
    awaitingReport: boolean,
  ) {
    this.awaitingReport = awaitingReport;
  }

  get bitmap(): DirtyBitmap {
    return this.replica.bitmap!;
  }

  get converged(): boolean {
    return !this.awaitingReport && this.inflight.size === 0 && this.bitmap.dirtyRegions === 0;
  }

  /** Throws unless [offset, offset + size) in sectors lies inside the volume. */
  checkExtent(offsetSectors: number, sizeSectors: number, what: string): void {
    const start = offsetSectors * SECTOR,
      end = start + sizeSectors * SECTOR;
    const size = this.replica.record!.sizeBytes;
    if (end > size || !Number.isSafeInteger(end)) {
      throw new ProtocolError(
        `${what} [${start}, ${end}) outside volume ${this.replica.name} (${size} bytes)`,
        ErrorCode.OUT_OF_RANGE,
      );
    }
  }

  /**
   * Next run of dirty regions with no read in flight, at most `maxRegions` long, from the
   * sweep cursor; wraps to a new pass at the end. Returns null when nothing is left to issue.
   */
  nextRun(maxRegions: number): [number, number] | null {
    const rec = this.replica.record!;
    const bm = this.bitmap;
    if (bm.dirtyRegions === 0) return null;
    for (let wrapped = 0; wrapped < 2; wrapped++) {
      let r = bm.nextDirty(rec.syncCursor);
      while (r >= 0 && this.inflightRegions.has(r)) r = bm.nextDirty(r + 1);
      if (r >= 0) {
        let end = r + 1;
        while (end < bm.regions && end - r < maxRegions && bm.get(end) && !this.inflightRegions.has(end)) end++;
        rec.syncCursor = end;
        return [r, end - 1];
      }
      if (wrapped === 0) {
        rec.syncCursor = 0;
        rec.syncPass += 1; // another pass over what writes re-dirtied
      }
    }
    return null;
  }

  begin(read: InflightRead): void {
    this.inflight.set(read.reqId, read);
    for (let r = read.first; r <= read.last; r++) this.inflightRegions.add(r);
  }

  /** No read in flight but `read` covers any of regions [first, last]. */
  soleRead(read: InflightRead, first: number, last: number): boolean {
    for (const other of this.inflight.values()) {
      if (other !== read && other.first <= last && other.last >= first) return false;
    }
    return true;
  }

  end(read: InflightRead): void {
    assert(this.inflight.get(read.reqId) === read, 'a remote read ends once, on the volume it was issued for');
    this.inflight.delete(read.reqId);
    for (let r = read.first; r <= read.last; r++) this.inflightRegions.delete(r);
    assert(this.inflight.size > 0 || this.inflightRegions.size === 0, 'regions are in flight only under a read');
  }

  /** A protected write to regions [first, last] was applied: reads of them are now stale. */
  touch(first: number, last: number): void {
    if (this.watch !== null) this.watch(first, last);
    if (this.inflight.size === 0) return;
    for (const read of this.inflight.values()) {
      if (read.last < first || read.first > last) continue;
      for (let r = Math.max(first, read.first); r <= Math.min(last, read.last); r++) read.touched.add(r);
    }
  }

  /**
   * A protected write of [start, end) (regions [first, last]) reached the recovery volume: the
   * whole regions it covers are now exact, unless a read of them is in flight.
   */
  written(start: number, end: number, first: number, last: number): void {
    const bm = this.bitmap;
    // The skip below is what keeps a read's stale answer from undoing this write: it must be exact.
    assert(this.inflight.size > 0 || this.inflightRegions.size === 0, 'regions are in flight only under a read');
    const fullFirst = start % bm.regionSize === 0 ? first : first + 1;
    const fullLast = end % bm.regionSize === 0 || end === bm.sizeBytes ? last : last - 1;
    for (let r = fullFirst; r <= fullLast; r++) if (!this.inflightRegions.has(r) && bm.get(r)) bm.clearRegions(r, r);
  }

  /** The recovery volume failed a write: keep the regions dirty, back off before resyncing. */
  async fault(e: Error, offset: number, first: number, last: number): Promise<void> {
    await this.replica.writeFailed(e.message, offset, first, last);
    this.retryAt = Date.now() + RETRY_MS;
  }

  /** Move the replica between syncing and protecting (and out of error) as the volume converges. */
  settle(): void {
    const rep = this.replica;
    if (rep.failover) return;
    if (rep.state === 'error' && this.retryAt <= Date.now() && rep.lastWriteOk) rep.retryAfterError();
    const st = rep.state;
    if (st === 'syncing' && this.converged) rep.setState('protecting');
    else if (st === 'protecting' && !this.converged) rep.setState('syncing');
  }
}

/** The session's volumes and their remote reads, round-robin under one in-flight limit. */
export class SyncEngine {
  private readonly volumes = new Map<number, VolumeSync>(); // by volume id
  private readonly reads = new Map<number, InflightRead>(); // by req_id
  private nextReqId = 1;
  private stopped = false;
  private pumpScheduled = false;
  private retryTimer: NodeJS.Timeout | null = null;
  private readonly runPump = (): void => {
    this.pumpScheduled = false;
    this.pump();
  };

  constructor(
    private readonly link: SyncLink,
    private readonly cfg: SyncConfig,
    private readonly log: Logger,
  ) {}

  /** A req_id for a REMOTE_IO_REQ; remote reads and failback writes share the numbering. */
  allocReqId(): number {
    return this.nextReqId++ >>> 0;
  }

  add(sync: VolumeSync): void {
    assert(!this.volumes.has(sync.volumeId), 'a volume id is attached once per session');
    this.volumes.set(sync.volumeId, sync);
  }

  list(): VolumeSync[] {
    return [...this.volumes.values()];
  }

  of(replica: Replica): VolumeSync | undefined {
    for (const sync of this.volumes.values()) if (sync.replica === replica) return sync;
    return undefined;
  }

  /** The attached volume with this id; a ProtocolError for any other id. */
  volume(id: number, what: string): VolumeSync {
    const sync = this.volumes.get(id);
    if (!sync) throw new ProtocolError(`${what} for unknown volume id ${id}`, ErrorCode.UNKNOWN_VOLUME);
    return sync;
  }

  /** No more reads: the session is closing or the agent shut down. */
  stop(): void {
    this.stopped = true;
    if (this.retryTimer) clearTimeout(this.retryTimer);
    this.retryTimer = null;
  }

  /** pump() once at the end of this turn, not once per write applied in it. */
  pumpSoon(): void {
    if (this.pumpScheduled) return;
    this.pumpScheduled = true;
    setImmediate(this.runPump);
  }

  /** Issue remote reads for dirty regions, up to the in-flight limit, round-robin over volumes. */
  pump(): void {
    if (this.stopped) return;
    const max = this.cfg.maxInflightReads,
      now = Date.now();
    let progress = true;
    while (progress && this.reads.size < max) {
      progress = false;
      for (const sync of this.volumes.values()) {
        if (this.reads.size >= max) break;
        if (sync.replica.failover || sync.awaitingReport) continue; // the agent's report comes first: no wasted reads
        if (sync.retryAt > now) {
          this.retryLater(sync.retryAt - now);
          continue;
        }
        if (this.issue(sync)) progress = true;
      }
    }
  }

  /** One remote read of the next dirty run of `sync`; false when it has none to issue. */
  private issue(sync: VolumeSync): boolean {
    const bm = sync.bitmap,
      regionSize = bm.regionSize;
    const run = sync.nextRun(Math.max(1, Math.floor(this.cfg.maxReadBytes / regionSize)));
    if (!run) return false;
    const start = run[0] * regionSize,
      end = Math.min((run[1] + 1) * regionSize, bm.sizeBytes);
    const read: InflightRead = { reqId: this.allocReqId(), sync, first: run[0], last: run[1], touched: new Set() };
    sync.begin(read);
    this.reads.set(read.reqId, read);
    const st = sync.replica.state;
    if (st !== 'syncing' && st !== 'error') sync.replica.setState('syncing');
    this.link.send([encodeRemoteIoReqHead(read.reqId, (end - start) / SECTOR, sync.volumeId, start / SECTOR, true)]);
    return true;
  }

  private retryLater(ms: number): void {
    if (this.retryTimer || this.stopped) return;
    this.retryTimer = setTimeout(() => {
      this.retryTimer = null;
      this.pump();
    }, ms);
  }

  /** The answer to one of our remote reads: write what no protected write overtook, clear it. */
  async onRemoteIoRes(m: RemoteIoRes): Promise<void> {
    const read = this.reads.get(m.reqId);
    if (!read) throw new ProtocolError(`REMOTE_IO_RES for unknown req_id ${m.reqId}`);
    assert(read.reqId === m.reqId, 'a remote read is found by its own req_id');
    const sync = read.sync;
    if (m.volumeId !== sync.volumeId) {
      throw new ProtocolError(`REMOTE_IO_RES ${m.reqId}: volume id ${m.volumeId}, request was for ${sync.volumeId}`);
    }
    this.reads.delete(m.reqId);
    try {
      await this.answer(read, m);
    } finally {
      // Its regions stay in flight until the answer is written: a pump meanwhile (checkpoint
      // timer, verify) must not issue a second read of them.
      sync.end(read);
    }
    sync.settle();
    this.pump(); // keep the pipeline full while responses stream in
  }

  /** Check a remote read's answer and write what is still wanted of it. */
  private async answer(read: InflightRead, m: RemoteIoRes): Promise<void> {
    const sync = read.sync;
    const bm = sync.bitmap,
      regionSize = bm.regionSize;
    const start = read.first * regionSize,
      end = Math.min((read.last + 1) * regionSize, bm.sizeBytes);
    const zeroes = m.ioStatus === IO_ZEROES && this.link.has(Cap.ZEROES) && m.data.length === 0;
    const sparse = m.ioStatus === IO_SPARSE && this.link.has(Cap.SPARSE);
    if (m.ioStatus !== IO_OK && !zeroes && !sparse) {
      sync.replica.recordFault(`remote read at ${start} failed on the agent: io_status ${m.ioStatus}`);
      this.log.error(
        { volume: sync.replica.name, offset: start, ioStatus: m.ioStatus },
        'remote read failed on the agent; region stays dirty',
      );
      sync.retryAt = Date.now() + RETRY_MS;
      return;
    }
    if (!zeroes && !sparse && m.data.length !== end - start) {
      throw new ProtocolError(`REMOTE_IO_RES ${m.reqId}: ${m.data.length} bytes, requested ${end - start}`);
    }
    const pieces = sparse ? decodeSparse(end - start, m.data) : null;
    await this.writeAnswer(read, m.data, zeroes, pieces, start);
  }

  /** Write the regions of `read` that no protected write touched since it was issued. */
  private async writeAnswer(
    read: InflightRead,
    data: Buffer,
    zeroes: boolean,
    pieces: SparsePiece[] | null,
    start: number,
  ): Promise<void> {
    const sync = read.sync,
      rep = sync.replica,
      bm = sync.bitmap,
      regionSize = bm.regionSize;
    let r = read.first;
    while (r <= read.last) {
      if (read.touched.has(r) || !bm.get(r)) {
        r++;
        continue;
      }
      let e = r;
      while (e + 1 <= read.last && !read.touched.has(e + 1) && bm.get(e + 1)) e++;
      const a = r * regionSize,
        b = Math.min((e + 1) * regionSize, bm.sizeBytes);
      try {
        if (pieces) await this.writeSparse(rep, pieces, start, a, b);
        else if (!zeroes) await rep.target!.write(data.subarray(a - start, b - start), a);
        else await rep.writeZeroes(r, e); // nothing written where the replica is known zero
        // No flush here: sync data needs no ack; the checkpoint flushes before it persists clears.
        rep.recordSyncBytes(b - a);
        assert(sync.soleRead(read, r, e), 'reads in flight never overlap: no other read of a cleared region');
        bm.clearRegions(r, e);
      } catch (err) {
        await sync.fault(err as Error, a, r, e);
      }
      r = e + 1;
    }
  }

  /**
   * Sync data runs up to SYNC_RUN_MAX go straight to the page cache in SYNC_WRITE_MAX pieces:
   * sync answers are applied one at a time, and a threadpool round trip per run left answers
   * waiting in the queue (the reads were idle half the time).
   */
  private async writeRun(t: GuardedTarget, d: Buffer, at: number): Promise<void> {
    if (d.length <= SYNC_RUN_MAX) {
      let o = 0;
      while (o < d.length && t.tryWriteSync(d.subarray(o, Math.min(o + SYNC_WRITE_MAX, d.length)), at + o)) {
        o += SYNC_WRITE_MAX;
      }
      if (o >= d.length) return;
      d = d.subarray(o);
      at += o;
    }
    await t.write(d, at);
  }

  /** Apply [a, b) of a sparse answer to a read that began at `start`: zero runs, then data. */
  private async writeSparse(rep: Replica, pieces: SparsePiece[], start: number, a: number, b: number): Promise<void> {
    // Zero runs first: they are checked against the replica's known-zero regions, which this
    // answer's own data would otherwise clear.
    for (const zero of [true, false]) {
      for (const p of pieces) {
        if ((p.data === null) !== zero) continue;
        const pa = Math.max(a, start + p.offset),
          pb = Math.min(b, start + p.offset + p.length);
        if (pa >= pb) continue;
        if (p.data) await this.writeRun(rep.target!, p.data.subarray(pa - start - p.offset, pb - start - p.offset), pa);
        else await rep.zeroBytes(pa, pb);
      }
    }
  }

  /** The agent's dirty extents on reconnect: resync them (or, failed over, record them). */
  async onDirtyReport(m: DirtyReport): Promise<void> {
    const sync = this.volume(m.volumeId, 'DIRTY_REPORT');
    const bm = sync.bitmap,
      failover = sync.replica.failover;
    let bytes = 0;
    for (const e of m.extents) {
      if (e.sizeSectors === 0) continue;
      sync.checkExtent(e.offsetSectors, e.sizeSectors, 'DIRTY_REPORT extent');
      const start = e.offsetSectors * SECTOR,
        end = start + e.sizeSectors * SECTOR;
      bytes += end - start;
      if (failover) {
        failover.protectedChanged.mark(start, end);
        continue;
      }
      bm.setBytes(start, end);
      sync.touch(bm.regionOf(start), bm.regionOf(end - 1));
    }
    await sync.replica.commitDirty();
    const final = (m.flags & DIRTY_FINAL) !== 0;
    if (final) sync.awaitingReport = false;
    this.log.info({ volume: sync.replica.name, extents: m.extents.length, bytes, final }, 'agent dirty report');
    this.link.send([encodeDirtyReportAck(m.volumeId, m.reportId)]);
    if (sync.replica.state === 'protecting' && bm.dirtyRegions > 0) sync.replica.setState('syncing');
    sync.settle();
  }

  /** Persist cleared bits and cursors of every volume, then go on reading. */
  async checkpoint(): Promise<void> {
    for (const sync of this.volumes.values()) {
      await sync.replica
        .checkpoint()
        .catch((e) => this.log.warn({ volume: sync.replica.name, cause: e.message }, 'checkpoint failed'));
    }
    this.pump();
  }
}
