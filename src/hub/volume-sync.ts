// One attached volume's place in the sync engine: its reads (and checksum compares) in flight,
// the regions they cover and which of those a protected write touched meanwhile, the sweep
// cursor, whether the agent's dirty report is still owed, and when the volume has converged.
import { ErrorCode, SECTOR, ProtocolError } from '../../protocol';
import type { DirtyBitmap } from '../../storage/bitmap';
import { assert } from '../assert';
import type { Replica } from './replica';

/** A remote read in flight, or a checksum compare holding its regions (checksum-sync.ts). */
export interface InflightRead {
  reqId: number;
  sync: VolumeSync;
  first: number; // first region
  last: number; // last region (inclusive)
  touched: Set<number>; // regions written after the read was issued: their read data is stale
}

export const RETRY_MS = 1000; // back-off after a failed remote read or recovery volume write

/** One attached volume: its reads in flight and its place in the sweep. */
export class VolumeSync {
  // Reads in flight by req_id: at most the engine's maxInflightReads, so finding the one over a
  // region is a scan; a set of their regions cost an insert and a delete per region, 16M for a
  // fresh 1 TiB volume.
  readonly inflight = new Map<number, InflightRead>();
  awaitingReport: boolean; // agent's dirty-extent hand-over not complete yet
  retryAt = 0; // after a failed remote read, back off until this time (ms)
  /**
   * Checksum resync: regions a write touched while their compare was in flight. They are read
   * whole, as any dirty region (at most the volume's regions; each leaves when its read is issued).
   */
  readonly readWhole = new Set<number>();
  /**
   * How many times the base read size the next read may be: doubled by each all-zero answer,
   * back to 1 at the first answer with data or a report of new regions (sync.ts readRegions).
   */
  zeroScale = 1;
  /** The agent cannot checksum: the fallback to whole reads is logged once per session. */
  checksumFallbackLogged = false;
  /** The sweep under way has issued a run, so it is counted in the record's syncPass. */
  private passCounted = false;
  private landingWait = false; // converged: waiting for the writes in flight to land (protectOnceLanded)
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
      for (let over = r >= 0 ? this.inflightAt(r) : null; over !== null; over = r >= 0 ? this.inflightAt(r) : null)
        r = bm.nextDirty(over.last + 1);
      if (r >= 0) {
        // reads are contiguous: one over a region after r (and not over r) starts after r
        const end = Math.min(bm.nextClean(r), this.nextInflight(r), r + maxRegions);
        rec.syncCursor = end;
        // A pass is counted by the first run it issues: a wrap that finds nothing (every dirty
        // region already in flight) is no pass, however often the engine asks.
        if (!this.passCounted) rec.syncPass += 1;
        this.passCounted = true;
        return [r, end - 1];
      }
      if (wrapped === 0) {
        rec.syncCursor = 0;
        this.passCounted = false; // the next run found starts a new pass over what writes re-dirtied
      }
    }
    return null;
  }

  /** The sweep goes on from region `r` (the run taken was shorter than nextRun's). */
  rewind(r: number): void {
    this.replica.record!.syncCursor = r;
  }

  begin(read: InflightRead): void {
    assert(this.soleRead(read, read.first, read.last), 'reads in flight never overlap');
    this.inflight.set(read.reqId, read);
  }

  /** The read in flight over region r, or null. */
  inflightAt(r: number): InflightRead | null {
    for (const read of this.inflight.values()) if (read.first <= r && r <= read.last) return read;
    return null;
  }

  /** The first region after r that a read in flight starts at (Infinity: none). */
  nextInflight(r: number): number {
    let next = Infinity;
    for (const read of this.inflight.values()) if (read.first > r && read.first < next) next = read.first;
    return next;
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
    const fullFirst = start % bm.regionSize === 0 ? first : first + 1;
    const fullLast = end % bm.regionSize === 0 || end === bm.sizeBytes ? last : last - 1;
    for (let r = fullFirst; r <= fullLast; r++) if (bm.get(r) && this.inflightAt(r) === null) bm.clearRegions(r, r);
  }

  /** The recovery volume failed a write: keep the regions dirty, back off before resyncing. */
  async fault(e: Error, offset: number, first: number, last: number): Promise<void> {
    await this.replica.writeFailed(e.message, offset, first, last);
    this.retryAt = Date.now() + RETRY_MS;
  }

  /** Move the replica between syncing and protecting (and out of error) as the volume converges. */
  settle(): void {
    const rep = this.replica;
    if (rep.failover || rep.hold === 'removed') return;
    if (rep.state === 'error' && this.retryAt <= Date.now() && rep.lastWriteOk) rep.retryAfterError();
    const st = rep.state;
    if (this.converged && rep.checksumResync) rep.endChecksumResync();
    if (st === 'syncing' && this.converged) this.protectOnceLanded();
    else if (st === 'protecting' && !this.converged) rep.setState('syncing');
  }

  /**
   * Protecting once the writes in flight at convergence (a write window: --cache none, RBD) have
   * landed, and none failed: a write failing after write() returned is a difference, which the
   * next flush turns into a dirty volume in error (Replica.flushRecovery). Writes handed over
   * after convergence are not waited for: under steady load the window never empties.
   */
  private protectOnceLanded(): void {
    const rep = this.replica,
      t = rep.target;
    const busy = t?.landing(0, t.sizeBytes);
    if (!busy) {
      if (!t?.writesFailed()) rep.setState('protecting');
      return;
    }
    if (this.landingWait) return;
    this.landingWait = true;
    void busy.then(() => {
      this.landingWait = false;
      if (rep.state === 'syncing' && this.converged && !t!.writesFailed()) rep.setState('protecting');
    });
  }
}
