// Checksum resync for one agent session (SPEC.md 10.2): while a replica's record says the hub
// cannot vouch for its data, a dirty run is compared before anything is read. Three stages,
// each holding its regions in flight as a read does (so a protected write or dirty report
// applied meanwhile marks them touched, and verify and the sweep leave them alone):
//   1. regions: one CHECKSUM_REQ of region digests for the run; equal regions are cleared;
//   2. blocks: the regions that differ are asked again as 4 KiB digests;
//   3. read: only the differing 4 KiB runs are read (REMOTE_IO_REQ) and written.
// Answers are applied in stream order, as verify's are; a touched region stays dirty and is read
// whole (VolumeSync.readWhole). Owns the compares and block reads in flight and the plans waiting
// for room under the session's in-flight limit.
import { IO_OK, SECTOR, ProtocolError, encodeChecksumReq, encodeRemoteIoReqHead } from '../../protocol';
import type { ChecksumRes, RemoteIoRes } from '../../protocol';
import type { Logger } from '../log';
import { assert } from '../assert';
import { RETRY_MS } from './volume-sync';
import type { InflightRead, VolumeSync } from './volume-sync';
import { checkChecksumRes, differingBlocks, runsOf } from './digests';
import { checkAnswer, writeRange } from './sync-write';

export const BLOCK_BYTES = 4096; // the finer digest: one differing 4 KiB block moves 4 KiB
const COMPARE_BYTES = 4 << 20; // bytes a CHECKSUM_REQ covers at most (the hub reads as much to compare)
const MAX_DIGESTS = 4096; // Limits.maxChecksumRegions

type Stage = 'regions' | 'blocks' | 'read';

/** Regions [first, last] of a volume held through the stages, registered as an InflightRead. */
interface Plan extends InflightRead {
  stage: Stage;
  blockBytes: number; // digest granularity of its CHECKSUM_REQ
  count: number; // digests asked
  pieces: [number, number][]; // read stage: byte ranges not yet requested
  outstanding: number; // read stage: block reads in flight
  failed: Set<number>; // regions whose read or write failed: they stay dirty
}

interface BlockRead {
  plan: Plan;
  start: number;
  end: number;
}

/** What the engine needs of the session's sync engine. */
export interface ChecksumHost {
  send(bufs: Buffer[]): void;
  has(cap: number): boolean;
  allocReqId(): number;
  maxReadBytes: number;
}

export class ChecksumSync {
  private readonly compares = new Map<number, Plan>(); // CHECKSUM_REQs in flight, by req_id
  private readonly reads = new Map<number, BlockRead>(); // REMOTE_IO_REQs of differing blocks, by req_id
  private ready: Plan[] = []; // holding regions, next request not sent (bounded by the requests that made them)
  private stopped = false;

  constructor(
    private readonly host: ChecksumHost,
    private readonly log: Logger,
  ) {}

  /** Requests of this engine in flight (they count against the session's read limit). */
  get inflight(): number {
    return this.compares.size + this.reads.size;
  }

  owns(reqId: number): boolean {
    return this.compares.has(reqId);
  }

  ownsRead(reqId: number): boolean {
    return this.reads.has(reqId);
  }

  /** Regions of one region-level compare. */
  runRegions(regionSize: number): number {
    return Math.max(1, Math.floor(COMPARE_BYTES / regionSize));
  }

  stop(): void {
    this.stopped = true;
    this.ready = [];
  }

  /**
   * Start comparing dirty regions [first, last] of `sync` (a run from the sweep, none in
   * flight). Returns the last region taken: a volume's shorter tail region is asked alone.
   */
  compare(sync: VolumeSync, first: number, last: number): number {
    const bm = sync.bitmap;
    const tail = bm.sizeBytes % bm.regionSize !== 0 && last === bm.regions - 1;
    if (tail && first < last) last--;
    const blockBytes = tail && first === last ? bm.sizeBytes - last * bm.regionSize : bm.regionSize;
    const plan = this.plan(sync, 'regions', first, last, blockBytes);
    this.send(plan);
    return last;
  }

  /** Send the next request of a plan waiting for room; false when none waits. */
  issueReady(): boolean {
    while (this.ready.length > 0) {
      const plan = this.ready[0];
      if (plan.sync.replica.failover) {
        this.ready.shift();
        plan.sync.end(plan); // promoted meanwhile: its regions stay dirty
        continue;
      }
      if (plan.stage !== 'read') {
        this.ready.shift();
        this.send(plan);
        return true;
      }
      const [start, end] = plan.pieces.shift()!;
      if (plan.pieces.length === 0) this.ready.shift();
      const reqId = this.host.allocReqId();
      this.reads.set(reqId, { plan, start, end });
      plan.outstanding++;
      plan.sync.replica.recordChecksumResync(0, 0, end - start);
      const head = encodeRemoteIoReqHead(reqId, (end - start) / SECTOR, plan.sync.volumeId, start / SECTOR, true);
      this.host.send([head]);
      return true;
    }
    return false;
  }

  private plan(sync: VolumeSync, stage: Stage, first: number, last: number, blockBytes: number): Plan {
    const bm = sync.bitmap;
    const bytes = Math.min((last + 1) * bm.regionSize, bm.sizeBytes) - first * bm.regionSize;
    const count = Math.ceil(bytes / blockBytes);
    assert(stage === 'read' || count <= MAX_DIGESTS, 'a CHECKSUM_REQ asks at most 4096 digests');
    const plan: Plan = {
      reqId: this.host.allocReqId(),
      sync,
      first,
      last,
      touched: new Set(),
      stage,
      blockBytes,
      count,
      pieces: [],
      outstanding: 0,
      failed: new Set(),
    };
    sync.begin(plan);
    return plan;
  }

  private send(plan: Plan): void {
    this.compares.set(plan.reqId, plan);
    const offsetSectors = (plan.first * plan.sync.bitmap.regionSize) / SECTOR;
    const m = encodeChecksumReq(plan.reqId, plan.blockBytes / SECTOR, plan.sync.volumeId, offsetSectors, plan.count);
    this.host.send([m]);
  }

  /** Digests of one of our CHECKSUM_REQs, applied after every write the agent sent before them. */
  async onChecksumRes(m: ChecksumRes): Promise<void> {
    const plan = this.compares.get(m.reqId);
    if (!plan) throw new ProtocolError(`CHECKSUM_RES req_id ${m.reqId} matches no outstanding CHECKSUM_REQ`);
    checkChecksumRes(m, plan.sync.volumeId, plan.count);
    this.compares.delete(m.reqId);
    const sync = plan.sync,
      rep = sync.replica;
    let carried: { differs: boolean[]; runs: [number, number][] } | null = null;
    try {
      if (m.ioStatus !== IO_OK) {
        const offset = plan.first * sync.bitmap.regionSize;
        rep.recordFault(`checksum at ${offset} failed on the agent: io_status ${m.ioStatus}`);
        this.log.error(
          { volume: rep.name, offset, ioStatus: m.ioStatus },
          'checksum resync: the agent could not checksum; reading whole',
        );
        for (let r = plan.first; r <= plan.last; r++) if (sync.bitmap.get(r)) sync.readWhole.add(r);
      } else if (!rep.failover && rep.target && !this.stopped) {
        carried = await this.compared(plan, m.digests);
      }
    } finally {
      sync.end(plan);
    }
    // Its regions that differ are held again at once, by the plans of the next stage.
    if (carried) for (const [a, b] of carried.runs) this.carry(plan, carried.differs, a, b);
  }

  /** Clear what is equal; carry what differs to the next stage (regions, then blocks, then reads). */
  private async compared(plan: Plan, digests: Buffer): Promise<{ differs: boolean[]; runs: [number, number][] }> {
    const sync = plan.sync,
      rep = sync.replica,
      bm = sync.bitmap,
      regionSize = bm.regionSize;
    const start = plan.first * regionSize,
      end = Math.min((plan.last + 1) * regionSize, bm.sizeBytes);
    const ours = Buffer.allocUnsafe(end - start);
    await rep.target!.read(ours, start);
    const differs = differingBlocks(ours, plan.blockBytes, digests);
    const perRegion = Math.max(1, regionSize / plan.blockBytes);
    const next: number[] = []; // regions that differ and go on
    let compared = 0,
      matched = 0;
    for (let r = plan.first; r <= plan.last; r++) {
      if (!bm.get(r)) continue;
      const bytes = Math.min(regionSize, bm.sizeBytes - r * regionSize);
      if (plan.touched.has(r)) {
        sync.readWhole.add(r); // the two sides were not at one point for it
        continue;
      }
      if (plan.stage === 'regions') compared += bytes;
      const i = (r - plan.first) * perRegion;
      if (differs.slice(i, i + perRegion).some((d) => d)) next.push(r);
      else {
        matched += bytes;
        bm.clearRegions(r, r); // equal: nothing moves
      }
    }
    rep.recordChecksumResync(compared, matched, 0);
    const runs = runsOf(flagsOf(next, plan.first, plan.last)).map(([a, b]): [number, number] => [
      plan.first + a,
      plan.first + b,
    ]);
    return { differs, runs };
  }

  /** Regions [first, last] of `plan` differ: ask their blocks, or read their differing blocks. */
  private carry(plan: Plan, differs: boolean[], first: number, last: number): void {
    const bm = plan.sync.bitmap,
      regionSize = bm.regionSize;
    const shortTail = bm.sizeBytes - last * regionSize < regionSize;
    if (plan.stage === 'regions' && regionSize > BLOCK_BYTES && !shortTail) {
      const step = Math.max(1, Math.min(MAX_DIGESTS / (regionSize / BLOCK_BYTES), COMPARE_BYTES / regionSize));
      for (let a = first; a <= last; a += step) {
        this.ready.push(this.plan(plan.sync, 'blocks', a, Math.min(last, a + step - 1), BLOCK_BYTES));
      }
      return;
    }
    // Read the differing blocks of [first, last] (whole regions when the stage had no finer digest).
    const read = this.plan(plan.sync, 'read', first, last, plan.blockBytes);
    const base = plan.first * regionSize,
      from = (first - plan.first) * (regionSize / plan.blockBytes);
    const blocks = plan.stage === 'blocks' ? differs : differs.map(() => true);
    const to = Math.ceil((Math.min((last + 1) * regionSize, bm.sizeBytes) - base) / plan.blockBytes);
    for (const [a, b] of runsOf(blocks.slice(0, to))) {
      if (b < from) continue;
      const s = base + Math.max(a, from) * plan.blockBytes,
        e = Math.min(base + (b + 1) * plan.blockBytes, bm.sizeBytes);
      for (let at = s; at < e; at += this.host.maxReadBytes)
        read.pieces.push([at, Math.min(e, at + this.host.maxReadBytes)]);
    }
    assert(read.pieces.length > 0, 'a region that differs has a block that differs');
    this.ready.push(read);
  }

  /** The answer to a read of differing blocks: write what no write touched; the plan ends with its last read. */
  async onRemoteIoRes(m: RemoteIoRes): Promise<void> {
    const r = this.reads.get(m.reqId)!;
    const plan = r.plan,
      sync = plan.sync;
    if (m.volumeId !== sync.volumeId) {
      throw new ProtocolError(`REMOTE_IO_RES ${m.reqId}: volume id ${m.volumeId}, request was for ${sync.volumeId}`);
    }
    this.reads.delete(m.reqId);
    plan.outstanding--;
    try {
      await this.write(plan, m, r.start, r.end);
    } finally {
      if (plan.outstanding === 0 && plan.pieces.length === 0) this.finish(plan);
    }
  }

  private async write(plan: Plan, m: RemoteIoRes, start: number, end: number): Promise<void> {
    const sync = plan.sync,
      rep = sync.replica,
      bm = sync.bitmap;
    const ans = checkAnswer(m, start, end, (cap) => this.host.has(cap));
    if (!ans) {
      rep.recordFault(`remote read at ${start} failed on the agent: io_status ${m.ioStatus}`);
      this.log.error(
        { volume: rep.name, offset: start, ioStatus: m.ioStatus },
        'remote read failed on the agent; region stays dirty',
      );
      for (let r = bm.regionOf(start); r <= bm.regionOf(end - 1); r++) plan.failed.add(r);
      sync.retryAt = Date.now() + RETRY_MS;
      return;
    }
    if (rep.failover) return;
    for (let r = bm.regionOf(start); r <= bm.regionOf(end - 1); r++) {
      if (plan.touched.has(r) || plan.failed.has(r) || !bm.get(r)) continue;
      const a = Math.max(start, r * bm.regionSize),
        b = Math.min(end, (r + 1) * bm.regionSize);
      try {
        await writeRange(rep, ans, a, b);
        rep.recordSyncBytes(b - a);
      } catch (err) {
        plan.failed.add(r);
        await sync.fault(err as Error, a, r, r);
      }
    }
  }

  /** Every differing block of the plan was read: its untouched regions are now exact. */
  private finish(plan: Plan): void {
    const sync = plan.sync,
      bm = sync.bitmap;
    for (let r = plan.first; r <= plan.last; r++) {
      if (!bm.get(r) || plan.failed.has(r) || plan.sync.replica.failover) continue;
      if (plan.touched.has(r)) sync.readWhole.add(r);
      else bm.clearRegions(r, r);
    }
    sync.end(plan);
  }
}

/** Flags over regions [first, last]: set for the regions in `regions`. */
function flagsOf(regions: number[], first: number, last: number): boolean[] {
  const flags = new Array<boolean>(last - first + 1).fill(false);
  for (const r of regions) flags[r - first] = true;
  return flags;
}
