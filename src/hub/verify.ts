// Online verify of one agent session's volumes, as `drbdadm verify` does: CHECKSUM_REQ over runs
// of regions, a bounded number in flight, paced by a shared byte-rate budget. A CHECKSUM_RES is
// applied in stream order, after every protected write the agent sent before it, and compared
// there with the hub's own digest of the recovery volume, read a region at a time. A region
// written while its request was in flight, dirty, or under a sync read is inconclusive and
// checked again later; a region that differs is checked once more before it counts as a
// mismatch (a write can reach the agent's image before its mirror frame leaves). Owns the checks
// in flight and the regions they saw touched; each volume's run (VerifyRun) owns its results.
import { Cap, IO_OK, SECTOR, ProtocolError, encodeChecksumReq } from '../../protocol';
import type { ChecksumRes } from '../../protocol';
import type { Logger } from '../log';
import { assert } from '../assert';
import type { VolumeSync } from './sync';
import { checkChecksumRes, digestMatches } from './digests';

const RUN_REGIONS = 16; // regions per CHECKSUM_REQ (1 MiB at the default 64 KiB region)
const MAX_INFLIGHT = 4; // CHECKSUM_REQs in flight per session
const MAX_ROUNDS = 50; // rounds of re-checks of inconclusive or once-mismatched regions
const RECHECK_MS = 200; // pause before a round of re-checks: lets a burst of writes pass
export const MAX_RANGES = 64; // mismatched ranges kept per run (the count is exact)

export type VerifyState = 'running' | 'done' | 'failed';

/** A volume's verify as /status shows it. */
export interface VerifyReport {
  id: number;
  state: VerifyState;
  reportOnly: boolean;
  sizeBytes: number;
  checkedBytes: number; // regions found equal or confirmed different
  mismatchedRegions: number;
  mismatches: { offset: number; length: number }[]; // the first MAX_RANGES ranges, adjacent ones merged
  unverifiedRegions: number; // still inconclusive after MAX_ROUNDS (never a mismatch)
  startedAt: string;
  finishedAt: string | null;
  error: string | null;
}

/** The scan-rate limit shared by every session's verify: bytes/s, 0 for none. */
export class VerifyPacer {
  private nextAt = 0;
  constructor(readonly bytesPerSecond: number) {
    assert(bytesPerSecond >= 0, 'a scan rate is not negative');
  }
  /** Milliseconds until `bytes` more may be checked (0: now). */
  wait(now: number): number {
    return this.bytesPerSecond === 0 ? 0 : Math.max(0, this.nextAt - now);
  }
  spend(bytes: number, now: number): void {
    if (this.bytesPerSecond > 0) this.nextAt = Math.max(now, this.nextAt) + (bytes * 1000) / this.bytesPerSecond;
  }
}

/** One verify of one volume: its cursor, the regions to check again, and its report. */
export class VerifyRun {
  readonly report: VerifyReport;
  cursor = 0; // next region of the first pass
  readonly recheck = new Set<number>(); // inconclusive regions
  readonly suspects = new Set<number>(); // differed once: checked again before they count
  round: number[] = []; // re-checks of this round not yet sent
  rounds = 0;
  inflight = 0;
  notBefore = 0; // a round of re-checks waits until then (ms)

  constructor(
    id: number,
    readonly volume: string,
    readonly sizeBytes: number,
    readonly regionSize: number,
    reportOnly: boolean,
  ) {
    this.report = {
      id,
      state: 'running',
      reportOnly,
      sizeBytes,
      checkedBytes: 0,
      mismatchedRegions: 0,
      mismatches: [],
      unverifiedRegions: 0,
      startedAt: new Date().toISOString(),
      finishedAt: null,
      error: null,
    };
  }

  get regions(): number {
    return Math.ceil(this.sizeBytes / this.regionSize);
  }

  get running(): boolean {
    return this.report.state === 'running';
  }

  bytesOf(r: number): number {
    return Math.min(this.regionSize, this.sizeBytes - r * this.regionSize);
  }

  /** A region confirmed different: counted, and its range kept while there is room. */
  mismatch(r: number): void {
    const rep = this.report,
      offset = r * this.regionSize,
      length = this.bytesOf(r);
    rep.mismatchedRegions++;
    rep.checkedBytes += length;
    // In offset order (answers and re-checks confirm regions in any order), adjacent ones merged.
    const list = rep.mismatches;
    let i = 0;
    while (i < list.length && list[i].offset < offset) i++;
    const before = list[i - 1],
      after = list[i];
    if (before && before.offset + before.length === offset) {
      before.length += length;
      if (after && after.offset === offset + length) before.length += list.splice(i, 1)[0].length;
    } else if (after && after.offset === offset + length) {
      after.offset = offset;
      after.length += length;
    } else {
      list.splice(i, 0, { offset, length });
      if (list.length > MAX_RANGES) list.pop(); // the lowest offsets are kept
    }
  }

  /** Regions still to check again, each once (a suspect may be inconclusive too), in order. */
  pending(): number[] {
    return [...new Set([...this.recheck, ...this.suspects])].sort((a, b) => a - b);
  }

  equal(r: number): void {
    this.report.checkedBytes += this.bytesOf(r);
  }

  /** Told once, when the run ends (the hub's event bus, through the scheduler). */
  onFinish: ((report: VerifyReport) => void) | null = null;

  finish(error: string | null): void {
    if (!this.running) return;
    this.report.state = error ? 'failed' : 'done';
    this.report.error = error;
    this.report.unverifiedRegions = error ? 0 : this.pending().length;
    this.report.finishedAt = new Date().toISOString();
    this.onFinish?.(this.report);
  }
}

interface Check {
  reqId: number;
  run: VerifyRun;
  sync: VolumeSync;
  first: number; // first region
  count: number;
  regionBytes: number; // bytes per region of this request (the tail region is shorter)
  touched: Set<number>; // regions a protected write or dirty report touched while in flight
}

/** Where the engine sends. */
export interface VerifyLink {
  send(bufs: Buffer[]): void;
  has(cap: number): boolean;
}

/** The verify runs of one agent session and their checks in flight. */
export class VerifyEngine {
  private readonly checks = new Map<number, Check>(); // by req_id
  private readonly runs = new Map<VolumeSync, VerifyRun>();
  private timer: NodeJS.Timeout | null = null;
  private stopped = false;
  private held = false; // the link is gone: no more checks; answers already received still land

  constructor(
    private readonly link: VerifyLink,
    private readonly pacer: VerifyPacer,
    private readonly log: Logger,
    /** req_ids: shared with the sync engine's checksum resync, so an answer finds its request. */
    private readonly allocReqId: () => number = counter(),
  ) {}

  /** A CHECKSUM_REQ of this engine is in flight under `reqId`. */
  owns(reqId: number): boolean {
    return this.checks.has(reqId);
  }

  /** Verify `sync`'s volume; the run's report says how it ends. */
  start(sync: VolumeSync, run: VerifyRun): void {
    if (this.stopped || this.held) return run.finish('the agent session is closing');
    if (!this.link.has(Cap.CHECKSUM)) return run.finish('the agent did not negotiate the CHECKSUM capability');
    if (sync.replica.failover) return run.finish('the volume is failed over');
    this.runs.get(sync)?.finish('superseded by a new verify');
    this.runs.set(sync, run);
    sync.watch = (first, last) => this.touched(sync, first, last);
    this.log.info({ volume: run.volume, id: run.report.id, reportOnly: run.report.reportOnly }, 'verify started');
    this.pump();
  }

  running(sync: VolumeSync): VerifyRun | undefined {
    return this.runs.get(sync);
  }

  /** The connection ended: nothing more is asked (the scan budget is the hub's); stop() follows. */
  hold(): void {
    this.held = true;
    if (this.timer) clearTimeout(this.timer);
    this.timer = null;
  }

  /** The session is closing: every run ends as failed. */
  stop(): void {
    this.stopped = true;
    if (this.timer) clearTimeout(this.timer);
    this.timer = null;
    for (const [sync, run] of this.runs) {
      run.finish('the agent session closed');
      sync.watch = null;
    }
    this.runs.clear();
    this.checks.clear();
  }

  /** A protected write or dirty report touched regions [first, last] of `sync`'s volume. */
  private touched(sync: VolumeSync, first: number, last: number): void {
    for (const c of this.checks.values()) {
      if (c.sync !== sync || c.first > last || c.first + c.count - 1 < first) continue;
      for (let r = Math.max(first, c.first); r <= Math.min(last, c.first + c.count - 1); r++) c.touched.add(r);
    }
  }

  /** Send checks up to the in-flight limit and the scan rate; end the runs that are complete. */
  pump(): void {
    if (this.stopped || this.held) return;
    const now = Date.now();
    for (const [sync, run] of this.runs) {
      while (this.checks.size < MAX_INFLIGHT && run.running) {
        const wait = Math.max(this.pacer.wait(now), run.cursor >= run.regions ? run.notBefore - now : 0);
        if (wait > 0) {
          this.later(wait);
          break;
        }
        if (!this.issue(sync, run, now)) break;
      }
      this.settle(sync, run);
    }
  }

  private later(ms: number): void {
    if (this.timer || this.stopped || this.held) return;
    this.timer = setTimeout(() => {
      this.timer = null;
      this.pump();
    }, ms);
  }

  /** One CHECKSUM_REQ: the next run of the first pass, or one region of a round of re-checks. */
  private issue(sync: VolumeSync, run: VerifyRun, now: number): boolean {
    if (sync.replica.failover) {
      run.finish('the volume was failed over');
      return false;
    }
    let first: number, count: number;
    const full = Math.floor(run.sizeBytes / run.regionSize); // regions of full size
    if (run.cursor < run.regions) {
      first = run.cursor;
      count = first < full ? Math.min(RUN_REGIONS, full - first) : 1;
      run.cursor = first + count;
    } else {
      if (run.round.length === 0) return false;
      first = run.round.shift()!;
      count = 1;
    }
    const regionBytes = run.bytesOf(first);
    const c: Check = { reqId: this.allocReqId(), run, sync, first, count, regionBytes, touched: new Set() };
    assert(first + count <= run.regions && regionBytes > 0, 'a check covers regions of the volume');
    this.checks.set(c.reqId, c);
    run.inflight++;
    this.pacer.spend(count * regionBytes, now);
    const offsetSectors = (first * run.regionSize) / SECTOR;
    this.link.send([encodeChecksumReq(c.reqId, regionBytes / SECTOR, sync.volumeId, offsetSectors, count)]);
    return true;
  }

  /** Once the pass and the round are answered: a new round of re-checks, or the end of the run. */
  private settle(sync: VolumeSync, run: VerifyRun): void {
    if (this.runs.get(sync) !== run) return; // ended already; its late answers change nothing
    if (run.running && (run.cursor < run.regions || run.inflight > 0 || run.round.length > 0)) return;
    if (run.running && run.recheck.size + run.suspects.size > 0 && run.rounds < MAX_ROUNDS) {
      run.rounds++;
      run.round = run.pending();
      run.notBefore = Date.now() + RECHECK_MS;
      this.later(RECHECK_MS);
      return;
    }
    run.finish(null);
    this.runs.delete(sync);
    sync.watch = null;
    const r = run.report;
    this.log.info(
      {
        volume: run.volume,
        id: r.id,
        state: r.state,
        checkedBytes: r.checkedBytes,
        mismatchedRegions: r.mismatchedRegions,
        unverifiedRegions: r.unverifiedRegions,
        cause: r.error ?? undefined,
      },
      'verify finished',
    );
  }

  /** The agent's digests, applied after every write it sent before them. */
  async onChecksumRes(m: ChecksumRes): Promise<void> {
    const c = this.checks.get(m.reqId);
    if (!c) {
      // SPEC 5.12: an answer that matches no outstanding CHECKSUM_REQ is a protocol error.
      const what = `CHECKSUM_RES req_id ${m.reqId} for volume id ${m.volumeId}`;
      throw new ProtocolError(`${what} matches no outstanding CHECKSUM_REQ`);
    }
    checkChecksumRes(m, c.sync.volumeId, c.count);
    this.checks.delete(m.reqId);
    try {
      if (c.run.running && m.ioStatus !== IO_OK) {
        const offset = c.first * c.run.regionSize;
        this.log.error({ volume: c.run.volume, offset, ioStatus: m.ioStatus }, 'verify: the agent could not checksum');
        c.run.finish(`the agent could not checksum at offset ${offset}: io_status ${m.ioStatus}`);
      } else if (c.run.running) {
        await this.compare(c, m.digests);
      }
    } finally {
      // Only once compared: a round of re-checks that a pump started meanwhile took the regions
      // still being compared as pending, and confirmed a mismatch again (listed twice, counted twice).
      c.run.inflight--;
    }
    this.settle(c.sync, c.run);
    this.pump();
  }

  /** Compare each region of `c` with the recovery volume, a region at a time. */
  private async compare(c: Check, digests: Buffer): Promise<void> {
    const { run, sync } = c,
      bm = sync.bitmap,
      target = sync.replica.target;
    if (!target || sync.replica.failover) return run.finish('the recovery volume is not open for verify');
    const buf = Buffer.allocUnsafe(c.regionBytes);
    for (let i = 0; i < c.count; i++) {
      const r = c.first + i;
      if (c.touched.has(r) || bm.get(r) || sync.inflightAt(r) !== null) {
        run.recheck.add(r); // inconclusive: the two sides were not at the same point for it
        continue;
      }
      run.recheck.delete(r);
      await target.read(buf, r * run.regionSize);
      if (!run.running || sync.replica.failover) return; // ended (session closed, failed over) meanwhile
      if (digestMatches(buf, digests, i)) {
        run.suspects.delete(r);
        run.equal(r);
      } else if (!run.suspects.has(r)) {
        run.suspects.add(r);
      } else {
        run.suspects.delete(r);
        run.mismatch(r);
        await this.repair(sync, run, r);
      }
    }
  }

  /** A confirmed difference: logged, and unless report-only marked dirty for the sync engine. */
  private async repair(sync: VolumeSync, run: VerifyRun, r: number): Promise<void> {
    const offset = r * run.regionSize,
      length = run.bytesOf(r),
      reportOnly = run.report.reportOnly;
    this.log.warn(
      { volume: run.volume, offset, length, reportOnly },
      'verify: the recovery volume differs from the protected volume',
    );
    if (reportOnly) return;
    await sync.replica.markDiffering(r, r);
    sync.settle();
    // No pump from here: the apply queue pumps the sync engine once it drains. A read issued now
    // could land on a region whose earlier read's answer is still being written.
  }
}

/** req_ids from 1 (an engine on its own, as in unit tests). */
function counter(): () => number {
  let next = 1;
  return () => next++ >>> 0;
}
