// The dirty-report hand-over: regions the hub must hear about by DIRTY_REPORT rather than as
// data (the snapshot of the dirty log after START_PROTECT, writes that overflowed the link,
// zeroed ranges). Owns per volume the owed regions, the report awaiting its acks (handing) and
// the report ids; a report's ack clears its regions once nothing newer holds them. Also owns,
// for the backlog bound (lag-bound.ts), what was owed and not yet read back by the hub (unread):
// set in owe(), cleared when remote IO answers a read of it; accounting only, never a dirty bit.
import { Cap, DIRTY_FINAL, DIRTY_ZERO, Limits, SECTOR, encodeDirtyReport, Extent } from '../../protocol';
import { DirtyBitmap } from '../../storage/bitmap';
import { assert } from '../assert';
import type { Logger } from '../log';
import type { AgentVolume, VolumeTable } from './volume';
import type { AgentStats, LinkPort, RegionHolder } from './ports';
import { dirtyRunsIn, type RegionGate } from './region-gate';

const REPORT_DELAY_MS = 10; // owed regions of a burst leave in one report

export class Handover implements RegionHolder {
  private link: LinkPort | null = null;
  private readonly owed: DirtyBitmap[]; // by volume index: dirty regions not yet reported on this connection
  private readonly handing: (DirtyBitmap | null)[]; // the report awaiting the hub's acks
  private readonly reportIds: number[]; // the last report's id (never reset: ids stay unique)
  private readonly acksAwaited: number[]; // DIRTY_REPORT frames of that report not yet acked
  private reportTimer: NodeJS.Timeout | null = null;
  private readonly unread: DirtyBitmap[]; // by volume index: owed on this connection, not read back yet
  /** Bytes of the hub's reads answered, all connections (a counter: the backlog bound's drain). */
  answeredBytes = 0;
  private readonly readBackAt: number[]; // by volume index: the last read back, or the first owe since none was unread

  constructor(
    private readonly volumes: VolumeTable,
    private readonly gate: RegionGate,
    private readonly maxQueueBytes: number,
    private readonly log: Logger,
    private readonly stats: AgentStats,
  ) {
    this.owed = volumes.list.map((v) => this.emptyMap(v));
    this.handing = volumes.list.map(() => null);
    this.reportIds = volumes.list.map(() => 0);
    this.acksAwaited = volumes.list.map(() => 0);
    this.unread = volumes.list.map((v) => this.emptyMap(v));
    this.readBackAt = volumes.list.map(() => 0);
  }

  attach(link: LinkPort): void {
    this.link = link;
  }

  /** The connection closed: the dirty log still has every region; the next one reports it all. */
  detach(): void {
    this.link = null;
    for (const v of this.volumes.list) {
      this.owed[v.index] = this.emptyMap(v);
      this.handing[v.index] = null;
      this.acksAwaited[v.index] = 0;
      this.unread[v.index] = this.emptyMap(v);
    }
  }

  /** `v` grew (online resize): what is owed covers the new regions too (clean). */
  grow(v: AgentVolume): void {
    this.owed[v.index].grow(v.sizeBytes);
    this.unread[v.index].grow(v.sizeBytes);
  }

  holds(v: AgentVolume, region: number): boolean {
    const handing = this.handing[v.index];
    return this.owed[v.index].get(region) || (handing !== null && handing.get(region));
  }

  heldRuns(v: AgentVolume, first: number, last: number, out: number[]): void {
    dirtyRunsIn(this.owed[v.index], first, last, out);
    const handing = this.handing[v.index];
    if (handing !== null) dirtyRunsIn(handing, first, last, out);
  }

  /** Whether any report still awaits the hub's ack. */
  get handingOver(): boolean {
    return this.handing.some((h) => h !== null);
  }

  /** A dirty range the hub must hear about by report (overflow, zeroing). */
  owe(v: AgentVolume, start: number, end: number): void {
    if (this.link === null || this.volumes.hubId(v) < 0) return; // reported in full at the next connection
    this.owed[v.index].setBytes(start, end);
    const unread = this.unread[v.index];
    if (unread.dirtyRegions === 0) this.readBackAt[v.index] = Date.now(); // a fresh backlog is not a stalled one
    unread.setBytes(start, end);
    this.scheduleReport();
  }

  /** Remote IO answered the hub's read of [start, end): what was owed there is no backlog now. */
  readBack(v: AgentVolume, start: number, end: number): void {
    this.answeredBytes += end - start;
    const unread = this.unread[v.index];
    if (unread.dirtyRegions === 0 || end <= start) return;
    unread.clearRegions(unread.regionOf(start), unread.regionOf(end - 1));
    this.readBackAt[v.index] = Date.now();
  }

  /**
   * A mirrored write of [start, end) was acked. The hub clears the dirty bits of the whole
   * regions a protected write covers (hub/volume-sync.ts written()): it never reads those back.
   */
  acked(v: AgentVolume, start: number, end: number): void {
    const unread = this.unread[v.index];
    if (unread.dirtyRegions === 0) return;
    const rs = unread.regionSize,
      first = Math.ceil(start / rs),
      last = end === unread.sizeBytes ? unread.regionOf(end - 1) : Math.floor(end / rs) - 1;
    if (first <= last) unread.clearRegions(first, last);
  }

  /**
   * Owed bytes the hub has not read back (the backlog bound's part), leaving out a volume not
   * protected now or whose regions the hub has not read for `stallMs` (paused by the operator,
   * or its sync busy elsewhere): waiting for those would only hold the guest to the wait cap.
   */
  unreadBytes(now: number, stallMs: number): number {
    let bytes = 0;
    for (const v of this.volumes.list) {
      const unread = this.unread[v.index];
      if (unread.dirtyRegions === 0 || this.volumes.hubId(v) < 0) continue;
      if (now - this.readBackAt[v.index] <= stallMs) bytes += unread.dirtyBytes;
    }
    return bytes;
  }

  /** Finds the regions of a report wholly in the image's holes now (remote-io.ts), or null. */
  holesIn: ((v: AgentVolume, regions: DirtyBitmap) => DirtyBitmap | null) | null = null;

  /**
   * START_PROTECT: hand the whole dirty log over (DIRTY_REPORT capability). With HOLES, the
   * regions in holes go as DIRTY_ZERO frames: the hub zeroes them instead of reading each (a
   * fresh thin volume is in sync without a read). Found and sent in this one turn: any write the
   * scan did not see lands later, and its frame follows the report.
   */
  protectStarted(v: AgentVolume): void {
    const link = this.link;
    if (link === null || !link.has(Cap.DIRTY_REPORT)) return;
    const bitmap = v.log.bitmap,
      snapshot = new DirtyBitmap(bitmap.sizeBytes, bitmap.regionSize);
    for (const [a, b] of bitmap.runs()) snapshot.setRegions(a, b - 1);
    const holes = link.has(Cap.HOLES) && this.holesIn ? this.holesIn(v, snapshot) : null;
    this.report(link, v, snapshot, holes);
  }

  /** DIRTY_REPORT_ACK: once every frame of the current report is acked, its regions may be cleared. */
  onReportAck(volumeId: number, reportId: number): void {
    const v = this.volumes.withHubId(volumeId);
    if (!v) return;
    const handed = this.handing[v.index];
    if (handed === null || reportId !== this.reportIds[v.index]) return; // stale: an older report
    assert(this.acksAwaited[v.index] > 0, 'a report in hand-over awaits acks');
    if (--this.acksAwaited[v.index] > 0) return;
    this.handing[v.index] = null;
    for (const [a, b] of handed.runs()) this.gate.clearQuiet(v, a, b - 1);
    v.log.sync();
    this.sendOwed(v);
  }

  /** Stop the report timer (agent stopping). */
  stop(): void {
    if (this.reportTimer) clearTimeout(this.reportTimer);
    this.reportTimer = null;
  }

  /** Report every owed region now (a FLUSH or POINT marker follows: mirror.ts); false while some must wait. */
  reportOwedNow(): boolean {
    if (this.reportTimer !== null) {
      clearTimeout(this.reportTimer);
      this.reportTimer = null;
    }
    let all = true;
    for (const v of this.volumes.list) {
      this.sendOwed(v);
      // a volume not protected on this connection is in no point of it (reported at the next)
      if (this.owed[v.index].dirtyRegions > 0 && this.volumes.hubId(v) >= 0) all = false;
    }
    if (!all) this.scheduleReport();
    return all;
  }

  private scheduleReport(): void {
    if (this.reportTimer !== null) return;
    this.reportTimer = setTimeout(() => {
      this.reportTimer = null;
      for (const v of this.volumes.list) this.sendOwed(v);
    }, REPORT_DELAY_MS);
  }

  /** Hand owed regions over in a report, once the previous report was acked and there is room. */
  private sendOwed(v: AgentVolume): void {
    const link = this.link,
      i = v.index;
    if (link === null || this.volumes.hubId(v) < 0 || this.handing[i] !== null || this.owed[i].dirtyRegions === 0) {
      return;
    }
    if (!link.has(Cap.DIRTY_REPORT)) {
      this.owed[i] = this.emptyMap(v); // a legacy hub resyncs from its own records
      return;
    }
    if (link.queuedBytes() > this.maxQueueBytes / 2) return this.scheduleReport();
    const owed = this.owed[i];
    this.owed[i] = this.emptyMap(v);
    this.report(link, v, owed);
  }

  /**
   * Send `regions` as one report, in as many DIRTY_REPORT frames as its extents need; those of
   * `holes` (a subset) in DIRTY_ZERO frames after the others.
   */
  private report(link: LinkPort, v: AgentVolume, regions: DirtyBitmap, holes: DirtyBitmap | null = null): void {
    const i = v.index,
      regionSize = regions.regionSize;
    this.handing[i] = regions;
    this.reportIds[i] = (this.reportIds[i] + 1) >>> 0;
    let data = regions;
    if (holes !== null && holes.dirtyRegions > 0) {
      data = new DirtyBitmap(regions.sizeBytes, regionSize);
      for (const [a, b] of regions.runs()) data.setRegions(a, b - 1);
      for (const [a, b] of holes.runs()) data.clearRegions(a, b - 1);
    } else holes = null;
    const frames: { flags: number; extents: Extent[] }[] = [{ flags: 0, extents: [] }];
    let bytes = 0;
    for (const [map, flags] of [[data, 0], ...(holes ? [[holes, DIRTY_ZERO]] : [])] as [DirtyBitmap, number][]) {
      if (flags !== frames[frames.length - 1].flags) frames.push({ flags, extents: [] });
      for (const [a, b] of map.runs()) {
        const start = a * regionSize,
          end = Math.min(b * regionSize, regions.sizeBytes);
        if (frames[frames.length - 1].extents.length === Limits.maxExtents) frames.push({ flags, extents: [] });
        frames[frames.length - 1].extents.push({ offsetSectors: start / SECTOR, sizeSectors: (end - start) / SECTOR });
        bytes += end - start;
      }
    }
    this.acksAwaited[i] = frames.length;
    const volumeId = this.volumes.hubId(v);
    frames.forEach((f, n) => {
      const flags = f.flags | (n === frames.length - 1 ? DIRTY_FINAL : 0);
      link.send([encodeDirtyReport(volumeId, this.reportIds[i], flags, f.extents)]);
    });
    this.stats.reportedBytes += bytes;
    const extents = frames.reduce((s, f) => s + f.extents.length, 0);
    this.log.info(
      { volume: v.name, extents, bytes, holeBytes: holes?.dirtyBytes ?? 0 },
      'dirty extents reported to hub',
    );
  }

  private emptyMap(v: AgentVolume): DirtyBitmap {
    return new DirtyBitmap(v.sizeBytes, v.log.bitmap.regionSize);
  }
}
