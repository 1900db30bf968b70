// Per-volume sync engine state inside a session: which regions have a remote read in flight,
// which of those were overwritten meanwhile, and where the sweep is. Pure bookkeeping; the
// session owns the IO.
import type { Replica } from './replica';

export interface InflightRead {
  reqId: number;
  sync: VolumeSync;
  first: number; // first region
  last: number; // last region (inclusive)
  touched: Set<number>; // regions written after the read was issued: their read data is stale
}

export class VolumeSync {
  readonly inflight = new Map<number, InflightRead>();
  readonly inflightRegions = new Set<number>();
  awaitingReport: boolean; // agent's dirty-extent hand-over not complete yet
  retryAt = 0; // after a failed remote read, back off until this time (ms)

  constructor(readonly replica: Replica, readonly volumeId: number, awaitingReport: boolean) {
    this.awaitingReport = awaitingReport;
  }

  get bitmap() {
    return this.replica.bitmap!;
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

  end(read: InflightRead): void {
    this.inflight.delete(read.reqId);
    for (let r = read.first; r <= read.last; r++) this.inflightRegions.delete(r);
  }

  /** A protected write to regions [first, last] was applied: reads of them are now stale. */
  touch(first: number, last: number): void {
    if (this.inflight.size === 0) return;
    for (const rd of this.inflight.values()) {
      if (rd.last < first || rd.first > last) continue;
      for (let r = Math.max(first, rd.first); r <= Math.min(last, rd.last); r++) rd.touched.add(r);
    }
  }

  get converged(): boolean {
    return !this.awaitingReport && this.inflight.size === 0 && this.bitmap.dirtyRegions === 0;
  }
}
