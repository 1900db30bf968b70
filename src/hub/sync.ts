// The sync engine of one agent session: remote reads of dirty regions (issue, answer, retry)
// round-robin over its volumes under one in-flight limit, the agent's dirty report, and
// checkpoints. A volume the hub cannot vouch for is compared by checksum first
// (checksum-sync.ts); each volume's reads in flight and cursor are its VolumeSync's
// (volume-sync.ts). It sends on a link it is given and knows nothing of the session.
import {
  Cap,
  SECTOR,
  DIRTY_FINAL,
  DIRTY_ZERO,
  ProtocolError,
  ErrorCode,
  encodeRemoteIoReqHead,
  encodeDirtyReportAck,
  Limits,
} from '../../protocol';
import type { RemoteIoRes, DirtyReport, ChecksumRes, Extent } from '../../protocol';
import type { Logger } from '../log';
import { assert } from '../assert';
import type { Replica } from './replica';
import { VolumeSync, RETRY_MS } from './volume-sync';
import type { InflightRead } from './volume-sync';
import { ChecksumSync } from './checksum-sync';
import { checkAnswer, writeRange, ReadAnswer } from './sync-write';
import { RateMeter, ResyncRateLimit } from './resync-rate';

const LARGE_READS_MAX = 4; // reads above the base size in flight on a session (readRegions)
// The largest of them. A guess that meets data sends that much in one answer, ahead of the
// mirrored writes behind it: 32 MiB would hold an 8 MiB/s link for 4 s.
const ZERO_READ_MAX = 8 << 20;
const ZERO_SCALE_MAX = 1 << 10; // a bound on the doubling; ZERO_READ_MAX bounds the read

export { VolumeSync } from './volume-sync';
export type { InflightRead } from './volume-sync';

/** Where the engine sends: a Link (sealing, caps) satisfies it. */
export interface SyncLink {
  send(bufs: Buffer[]): void;
  has(cap: number): boolean;
}

export interface SyncConfig {
  maxInflightReads: number; // remote reads in flight per session
  maxReadBytes: number; // largest remote read
  resyncRate?: ResyncRateLimit; // the hub-wide --max-resync-rate, shared by sessions
}

/** The session's volumes and their remote reads, round-robin under one in-flight limit. */
export class SyncEngine {
  private readonly volumes = new Map<number, VolumeSync>(); // by volume id
  private readonly reads = new Map<number, InflightRead>(); // by req_id
  /** Volumes removed by the operator (retire): their late frames are dropped, at most one per volume. */
  private readonly retired = new Map<number, VolumeSync>();
  private nextReqId = 1;
  private stopped = false;
  private pumpScheduled = false;
  private retryTimer: NodeJS.Timeout | null = null;
  private readonly checksums: ChecksumSync;
  /** Resync bytes answered (what crossed the link), for /status and /metrics. */
  readonly meter = new RateMeter();
  private readonly runPump = (): void => {
    this.pumpScheduled = false;
    this.pump();
  };

  constructor(
    private readonly link: SyncLink,
    private readonly cfg: SyncConfig,
    private readonly log: Logger,
    /** A failure off the apply queue (a dirty report that cannot be persisted): the session ends. */
    private readonly fail: (e: Error) => void = (e) => log.error({ cause: e.message }, 'sync engine failure'),
  ) {
    const host = {
      send: (bufs: Buffer[]) => link.send(bufs),
      has: (cap: number) => link.has(cap),
      allocReqId: () => this.allocReqId(),
      maxReadBytes: cfg.maxReadBytes,
    };
    this.checksums = new ChecksumSync(host, log);
  }

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

  /** The attached (or retired) volume with this id; a ProtocolError for any other id. */
  volume(id: number, what: string): VolumeSync {
    const sync = this.volumes.get(id) ?? this.retired.get(id);
    if (!sync) throw new ProtocolError(`${what} for unknown volume id ${id}`, ErrorCode.UNKNOWN_VOLUME);
    return sync;
  }

  /**
   * The operator removed `sync`'s volume (volume-set.ts): no more reads of it; frames the agent
   * sent before it heard STOP_PROTECT still find the id and are dropped (the replica's hold).
   */
  retire(sync: VolumeSync): void {
    assert(sync.replica.hold === 'removed', 'only a removed volume is retired');
    this.volumes.delete(sync.volumeId);
    this.retired.set(sync.volumeId, sync);
  }

  /** No more reads: the session is closing or the agent shut down. */
  stop(): void {
    this.stopped = true;
    this.checksums.stop();
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
    const limit = this.cfg.resyncRate;
    let progress = true;
    while (progress && this.inflight < max) {
      progress = false;
      const wait = limit ? limit.wait(now) : 0;
      if (wait > 0) return this.retryLater(wait); // --max-resync-rate
      if (this.checksums.issueReady()) {
        progress = true; // plans holding regions go first: they end sooner
        continue;
      }
      for (const sync of this.volumes.values()) {
        if (this.inflight >= max) break;
        // the agent's report comes first: no wasted reads; a held volume is read only once resumed
        if (sync.replica.failover || sync.replica.hold !== null || sync.awaitingReport) continue;
        // after a failed flush, nothing is read until one succeeds (checkpoint() settles then): the
        // failure of a write in flight shows only at a flush, so reading on would clear bits unproven
        if (sync.replica.state === 'error' && sync.replica.flushFailed) continue;
        if (sync.retryAt > now) {
          this.retryLater(sync.retryAt - now);
          continue;
        }
        if (this.issue(sync)) progress = true;
      }
    }
  }

  private get inflight(): number {
    return this.reads.size + this.checksums.inflight;
  }

  /** One remote read (or checksum compare) of the next dirty run of `sync`; false when it has none. */
  private issue(sync: VolumeSync): boolean {
    const bm = sync.bitmap,
      regionSize = bm.regionSize,
      readMax = Math.max(1, Math.floor(this.cfg.maxReadBytes / regionSize));
    const checksum = this.checksumFirst(sync);
    const regions = checksum ? this.checksums.runRegions(regionSize) : this.readRegions(sync, readMax);
    const run = regions > 0 ? sync.nextRun(regions) : null;
    if (!run) return false;
    if (checksum) {
      // Compare, except the regions a write touched while they were compared: those are read whole.
      const whole = sync.readWhole.has(run[0]);
      let e = run[0];
      while (e < run[1] && sync.readWhole.has(e + 1) === whole && (!whole || e + 1 - run[0] < readMax)) e++;
      if (!whole) e = this.checksums.compare(sync, run[0], e);
      sync.rewind(e + 1);
      if (!whole) return this.started(sync);
      for (let r = run[0]; r <= e; r++) sync.readWhole.delete(r);
      run[1] = e;
      sync.replica.recordChecksumResync(0, 0, Math.min((e + 1) * regionSize, bm.sizeBytes) - run[0] * regionSize);
    }
    const start = run[0] * regionSize,
      end = Math.min((run[1] + 1) * regionSize, bm.sizeBytes);
    const read: InflightRead = { reqId: this.allocReqId(), sync, first: run[0], last: run[1], touched: new Set() };
    sync.begin(read);
    this.reads.set(read.reqId, read);
    this.link.send([encodeRemoteIoReqHead(read.reqId, (end - start) / SECTOR, sync.volumeId, start / SECTOR, true)]);
    return this.started(sync);
  }

  /**
   * Regions the next whole read of `sync` may cover: the base, or, while the agent answers this
   * volume's reads all zero (a thin volume's holes), up to ZERO_READ_MAX. A fresh thin
   * 1 TiB volume took ~1M round trips of 1 MiB (36 s; nbdcopy, which asks block status, copies
   * 256 GiB of holes in 0.09 s). At most LARGE_READS_MAX such reads are in flight on the session,
   * and none of the base size beside them (0: issue nothing now): a guess that meets data costs
   * one answer of at most ZERO_READ_MAX each, and the first resets the size.
   */
  private readRegions(sync: VolumeSync, base: number): number {
    if (sync.zeroScale <= 1) return base;
    let large = 0; // reads not yet written (an answered read is written before it leaves sync.inflight)
    for (const s of this.volumes.values())
      for (const r of s.inflight.values()) if (r.last - r.first + 1 > base) large++;
    if (large >= LARGE_READS_MAX) return 0;
    const most = Math.max(base, Math.floor(Math.min(ZERO_READ_MAX, Limits.maxIoBytes) / sync.bitmap.regionSize));
    return Math.min(most, base * sync.zeroScale);
  }

  private started(sync: VolumeSync): true {
    const st = sync.replica.state;
    if (st !== 'syncing' && st !== 'error') sync.replica.setState('syncing');
    return true;
  }

  /** The volume syncs by checksum and the agent can answer CHECKSUM_REQ (else: whole reads, said once). */
  private checksumFirst(sync: VolumeSync): boolean {
    if (!sync.replica.checksumResync) return false;
    if (this.link.has(Cap.CHECKSUM)) return true;
    if (!sync.checksumFallbackLogged) {
      sync.checksumFallbackLogged = true;
      this.log.warn(
        { volume: sync.replica.name },
        'checksum resync: the agent did not negotiate the CHECKSUM capability; reading every dirty region whole',
      );
    }
    return false;
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
    if (this.checksums.ownsRead(m.reqId)) {
      this.meter.add(m.data.length, Date.now());
      await this.checksums.onRemoteIoRes(m);
      return this.answered(m.volumeId);
    }
    const read = this.reads.get(m.reqId);
    if (!read) throw new ProtocolError(`REMOTE_IO_RES for unknown req_id ${m.reqId}`);
    assert(read.reqId === m.reqId, 'a remote read is found by its own req_id');
    const sync = read.sync;
    if (m.volumeId !== sync.volumeId) {
      throw new ProtocolError(`REMOTE_IO_RES ${m.reqId}: volume id ${m.volumeId}, request was for ${sync.volumeId}`);
    }
    this.reads.delete(m.reqId);
    const now = Date.now();
    this.meter.add(m.data.length, now);
    this.cfg.resyncRate?.spend(m.data.length, now);
    try {
      // after a failed flush every region is dirty again: an answer still in flight then is
      // dropped, not written into a volume that just failed (its failure would show only at a flush)
      const rep = sync.replica;
      if (rep.hold !== 'removed' && !(rep.state === 'error' && rep.flushFailed)) await this.answer(read, m);
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
    const ans = checkAnswer(m, start, end, (cap) => this.link.has(cap));
    if (!ans) {
      sync.replica.recordFault(`remote read at ${start} failed on the agent: io_status ${m.ioStatus}`);
      this.log.error(
        { volume: sync.replica.name, offset: start, ioStatus: m.ioStatus },
        'remote read failed on the agent; region stays dirty',
      );
      sync.retryAt = Date.now() + RETRY_MS;
      return;
    }
    const allZero = ans.zeroes || (ans.pieces !== null && ans.pieces.every((p) => p.data === null));
    sync.zeroScale = allZero ? Math.min(ZERO_SCALE_MAX, sync.zeroScale * 2) : 1;
    await this.writeAnswer(read, ans);
  }

  /** Write the regions of `read` that no protected write touched since it was issued. */
  private async writeAnswer(read: InflightRead, ans: ReadAnswer): Promise<void> {
    const sync = read.sync,
      rep = sync.replica,
      bm = sync.bitmap,
      regionSize = bm.regionSize;
    for (let r = read.first; r <= read.last;) {
      // the next run still dirty and untouched: by the bitmap's runs when no write touched the read
      if (read.touched.size === 0) {
        r = bm.nextDirty(r);
        if (r < 0 || r > read.last) break;
      } else if (read.touched.has(r) || !bm.get(r)) {
        r++;
        continue;
      }
      let e = read.touched.size === 0 ? Math.min(bm.nextClean(r), read.last + 1) - 1 : r;
      while (e + 1 <= read.last && !read.touched.has(e + 1) && bm.get(e + 1)) e++;
      const a = r * regionSize,
        b = Math.min((e + 1) * regionSize, bm.sizeBytes);
      try {
        await writeRange(rep, ans, a, b);
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

  /** Digests for a checksum resync; false: not ours (an online verify's). */
  ownsChecksum(reqId: number): boolean {
    return this.checksums.owns(reqId);
  }

  async onChecksumRes(m: ChecksumRes): Promise<void> {
    await this.checksums.onChecksumRes(m);
    this.answered(m.volumeId);
  }

  private answered(volumeId: number): void {
    this.volumes.get(volumeId)?.settle();
    this.pump();
  }

  /** The agent's dirty extents on reconnect: resync them (or, failed over, record them). */
  async onDirtyReport(m: DirtyReport): Promise<void> {
    const sync = this.volume(m.volumeId, 'DIRTY_REPORT');
    if (sync.replica.hold === 'removed') return this.link.send([encodeDirtyReportAck(m.volumeId, m.reportId)]);
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
    // (a checksum resync compares them instead: a seeded replica is zero there already, as a rule)
    const zero = (m.flags & DIRTY_ZERO) !== 0 && !failover && !sync.replica.checksumResync;
    if (zero && sync.replica.hold === null && this.link.has(Cap.HOLES)) this.zeroHoles(sync, m.extents);
    else if (bytes > 0 && !zero) sync.zeroScale = 1; // regions owed now (writes past the link's queue) hold data
    const final = (m.flags & DIRTY_FINAL) !== 0;
    if (final) sync.awaitingReport = false;
    this.log.info({ volume: sync.replica.name, extents: m.extents.length, bytes, final }, 'agent dirty report');
    if (sync.replica.state === 'protecting' && bm.dirtyRegions > 0) sync.replica.setState('syncing');
    sync.settle();
    // Only the ack waits for the bits to be on disk: on it the agent forgets the regions, and
    // until then it keeps them dirty (and reports them again after a hub crash). The stream
    // goes on meanwhile: its writes and reads of these regions are ordered by the bits in
    // memory, and a clear is held until the replica is flushed (storage/bitmap.ts). Before,
    // the session's queue waited for each report's fdatasync (issue 17: 450 ms of a 5 s job).
    const volume = sync.replica.name;
    sync.replica.commitDirty().then(
      () => this.stopped || this.link.send([encodeDirtyReportAck(m.volumeId, m.reportId)]),
      (e: Error) => {
        if (!this.stopped) return this.fail(new Error(`volume ${volume}: cannot persist a dirty report: ${e.message}`));
        this.log.warn({ volume, cause: e.message }, 'dirty report not persisted; unacked, the agent reports it again');
      },
    );
  }

  /**
   * A DIRTY_ZERO frame (cap HOLES): its extents read as zero on the protected volume at this
   * point of the stream (SPEC 9). Their whole regions that the recovery volume is known to hold
   * zero in (a replica this hub created, never written there) are in sync: cleared at once, no
   * read, no write. The rest stay dirty for the usual paced reads, whose all-zero answers grow
   * (writing 1 TiB of zeroes here would hold every later frame of the VM meanwhile). Not those
   * under a read in flight either (its answer settles them). Synchronous: nothing comes between.
   */
  private zeroHoles(sync: VolumeSync, extents: Extent[]): void {
    const bm = sync.bitmap,
      rs = bm.regionSize,
      rep = sync.replica;
    for (const x of extents) {
      const start = x.offsetSectors * SECTOR,
        end = start + x.sizeSectors * SECTOR;
      if (end <= start) continue;
      const first = Math.ceil(start / rs),
        last = end >= bm.sizeBytes ? bm.regions - 1 : Math.floor(end / rs) - 1;
      for (let r = bm.nextDirty(first); r >= 0 && r <= last;) {
        const over = sync.inflightAt(r);
        if (over !== null) {
          r = bm.nextDirty(over.last + 1);
          continue;
        }
        const e = Math.min(bm.nextClean(r), sync.nextInflight(r), last + 1) - 1;
        const a = r * rs,
          b = Math.min((e + 1) * rs, bm.sizeBytes);
        if (rep.knownZeroCovers(a, b)) {
          rep.recordSyncBytes(b - a);
          bm.clearRegions(r, e);
        }
        r = bm.nextDirty(e + 1);
      }
    }
  }

  /**
   * Persist cleared bits and cursors of every volume, then go on reading. Settle each after its
   * flush: a volume in error whose writes all landed since (the write window's failures surface
   * only at a flush) may have nothing left to read, so no answer would settle it.
   */
  async checkpoint(): Promise<void> {
    for (const sync of this.volumes.values()) {
      await sync.replica
        .checkpoint()
        .catch((e) => this.log.warn({ volume: sync.replica.name, cause: e.message }, 'checkpoint failed'));
      sync.settle();
    }
    this.pump();
  }
}
