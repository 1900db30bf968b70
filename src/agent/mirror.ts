// The mirror: every completed guest write goes to the hub as one PROTECTED_WRITE with this
// connection's next sequence number (SPEC §7.1), and stays pending until a WRITE_ACK covers it.
// Owns the sequence numbers, the pending writes, and per region the newest seq in flight
// (regionSeq): an ack clears a region only when no later write to it still pends.
// Past the link's queue or pending limit a write is not sent but owed by report instead (a
// large write past a smaller queue: LARGE_QUEUE_BYTES). Counts the bytes acked, and the bytes
// the hub applied (WRITE_APPLIED, cap APPLIED; an ack says applied too), so that the backlog
// bound (lag-bound.ts) reads the unapplied bytes without a count on the write path. Only the
// durable ack clears anything: applied writes stay pending.
// Owns the markers of consistent points too: FLUSH for guest flushes, POINT when the hub asks
// (SPEC §7.4); each leaves only behind the reports of every region owed before it.
import { Cap, SECTOR, IO_OK, ProtocolError, encodeProtectedWriteHead, encodeFlush, encodePoint } from '../../protocol';
import type { BufferPool } from '../buffer-pool';
import { assert } from '../assert';
import type { AgentVolume, VolumeTable } from './volume';
import type { AgentStats, LinkPort, RegionHolder } from './ports';
import { keysIn, type RegionGate } from './region-gate';
import { PendingRing } from './pending-ring';

export interface MirrorLimits {
  maxQueueBytes: number; // bytes waiting on the link; beyond it writes become owed regions
  maxPendingWrites: number; // writes awaiting the hub's ack
  /** FLUSH markers at most this often (default FLUSH_MARKER_GAP_MS); 0: one per guest flush. */
  flushMarkerGapMs?: number;
}

/** Where writes that do not fit on the link go: the hand-over owes them to the hub by report. */
export interface OverflowSink {
  owe(v: AgentVolume, start: number, end: number): void;
  /** A mirrored write of [start, end) was acked: the hub holds its whole regions exactly (not owed). */
  acked(v: AgentVolume, start: number, end: number): void;
  /** Report every owed region now, ahead of a FLUSH marker; false while some must still wait. */
  reportOwedNow(): boolean;
}

// A large write overflows sooner: while LARGE_QUEUE_BYTES wait on the link, it becomes an owed
// region, as QEMU's background mirror marks its dirty bitmap. Rewrites of an owed region then
// cost the link and the hub nothing until it is read once, while a queued 1 MiB write is sent
// and applied even when the next one overwrites it. Issue 17, tools/bench/overflow-cost.sh,
// 5 alternating rounds of the 1 MiB job: 4 MiB against 64 MiB gave 2-6x fio's MiB/s and
// 1/2-1/5 of the agent + hub CPU per MiB until the copies were equal. Small writes (random
// 4 KiB: little to coalesce, and a report round trip each) keep the whole queue.
export const LARGE_WRITE = 256 << 10;
export const LARGE_QUEUE_BYTES = 4 << 20;
// A guest that flushes after every write (a database) would send the hub a FLUSH marker per
// write: a second frame, a second wakeup of the hub and a journal point each, about as much hub
// CPU as the write itself (issue 17's flush job, 4 KiB at depth 1). Markers leave at most this
// often; the flushes between share the next one, sent when the gap ends, so the newest flush
// always gets its point. That point may follow writes made after the flush it marks: still a
// prefix of the stream the guest completed, as crash-consistent as a --checkpoint-interval
// point. The hub commits this often anyway (its --commit-interval, 5 ms by default).
export const FLUSH_MARKER_GAP_MS = 5;
// A POINT the hub asked for waits while an owed region cannot be reported (its volume's last
// report unacked, or the link's queue too long); it is tried again at each report ack and, for
// the queue, this often.
const POINT_RETRY_MS = 10;

export class Mirror implements RegionHolder {
  private link: LinkPort | null = null;
  private sentSeq = 0;
  private readonly pending: PendingRing; // sent, not acked: oldest first, at most maxPendingWrites
  private readonly regionSeq: Map<number, number>[]; // by volume index: region -> newest seq in flight
  private readonly markerGapMs: number;
  private lastMarkerAt = -Infinity; // when this connection's last FLUSH marker left (performance.now)
  private markerTimer: NodeJS.Timeout | null = null; // a marker owed to flushes inside the gap
  private readonly markerDue = (): void => {
    this.markerTimer = null;
    this.sendMarker();
  };
  private pointWanted = false; // the hub asked for a POINT not sent yet (at most one: SPEC 5.20)
  // Past this many bytes on the link a write calls queueHigh: the backlog bound holds replies
  // from there (lag-bound.ts), and the small-write fast path only sees its `over` when told.
  queueHoldBytes = Infinity;
  queueHigh: () => void = () => {};
  private pointTimer: NodeJS.Timeout | null = null;
  private readonly pointDue = (): void => {
    this.pointTimer = null;
    this.sendPoint();
  };
  /** Mirrored bytes acked, all connections (a counter). */
  ackedBytes = 0;
  /** Mirrored bytes the hub applied or acked, all connections (a counter: the backlog bound's drain). */
  appliedBytes = 0;
  private appliedCount = 0; // pending writes, from the oldest, known applied
  private appliedSeq = 0; // the newest seq known applied on this connection
  private mirroredAtAttach = 0; // stats.mirroredBytes when this connection began
  private ackedAtAttach = 0;
  private appliedAtAttach = 0;

  constructor(
    private readonly volumes: VolumeTable,
    private readonly gate: RegionGate,
    private readonly overflow: OverflowSink,
    private readonly limits: MirrorLimits,
    private readonly writePool: BufferPool,
    private readonly stats: AgentStats,
  ) {
    this.regionSeq = volumes.list.map(() => new Map());
    this.pending = new PendingRing(limits.maxPendingWrites);
    this.markerGapMs = limits.flushMarkerGapMs ?? FLUSH_MARKER_GAP_MS;
    if (!(this.markerGapMs >= 0)) throw new RangeError(`flush marker gap ${limits.flushMarkerGapMs} ms: must be >= 0`);
  }

  /** The connection is ready (capabilities known): mirror on it from seq 1. */
  attach(link: LinkPort): void {
    this.link = link;
    this.mirroredAtAttach = this.stats.mirroredBytes;
    this.ackedAtAttach = this.ackedBytes;
    this.appliedAtAttach = this.appliedBytes;
  }

  /** Bytes mirrored on this connection (queued or sent) and not acked yet. */
  get unackedBytes(): number {
    if (this.link === null) return 0;
    const n = this.stats.mirroredBytes - this.mirroredAtAttach - (this.ackedBytes - this.ackedAtAttach);
    assert(n >= 0, 'acked bytes were mirrored on this connection');
    return n;
  }

  /** Bytes mirrored on this connection (queued or sent) that the hub has not applied yet (as far as it said). */
  get unappliedBytes(): number {
    if (this.link === null) return 0;
    const n = this.stats.mirroredBytes - this.mirroredAtAttach - (this.appliedBytes - this.appliedAtAttach);
    assert(n >= 0, 'applied bytes were mirrored on this connection');
    return n;
  }

  /** The connection closed: every unacked write stays in the dirty log; seqs start over. */
  detach(): void {
    this.link = null;
    if (this.markerTimer) clearTimeout(this.markerTimer);
    this.markerTimer = null;
    this.lastMarkerAt = -Infinity;
    if (this.pointTimer) clearTimeout(this.pointTimer);
    this.pointTimer = null;
    this.pointWanted = false; // the hub's request ended with its connection
    this.pending.clear();
    this.appliedCount = 0;
    this.appliedSeq = 0;
    this.sentSeq = 0;
    for (const m of this.regionSeq) m.clear();
  }

  holds(v: AgentVolume, region: number): boolean {
    return this.regionSeq[v.index].has(region);
  }

  heldRuns(v: AgentVolume, first: number, last: number, out: number[]): void {
    keysIn(this.regionSeq[v.index], first, last, out);
  }

  /** Writes sent on this connection, and the oldest one not acked yet (0: none): for the ack lag. */
  get sent(): number {
    return this.sentSeq;
  }
  get oldestPending(): number {
    return this.pending.size > 0 ? this.pending.seqs[this.pending.slot(0)] : 0;
  }

  get pendingWrites(): number {
    return this.pending.size;
  }

  /** Send a write that has just landed on the image [offset, offset + len). No allocation but the frame's. */
  mirror(v: AgentVolume, offset: number, data: Buffer | Buffer[], len: number): void {
    this.stats.writes++;
    const link = this.link;
    if (link === null) return; // not connected: the dirty log has it
    const volumeId = this.volumes.hubId(v);
    if (volumeId < 0) return; // not protected on this connection: the dirty log has it
    const queued = link.queuedBytes();
    if (
      queued + len > this.limits.maxQueueBytes ||
      (len >= LARGE_WRITE && queued >= LARGE_QUEUE_BYTES) ||
      this.pendingWrites >= this.limits.maxPendingWrites
    ) {
      this.stats.overflowWrites++;
      if (!link.has(Cap.DIRTY_REPORT)) {
        // A legacy hub cannot hear of owed regions, and it never saw this write: end the session
        // (unclean, so the hub's next one resyncs everything) rather than diverge in silence.
        link.close?.(
          new Error(`mirror queue full on a link without DIRTY_REPORT (volume ${v.name}, offset ${offset})`),
        );
        return;
      }
      this.overflow.owe(v, offset, offset + len);
      return;
    }
    const seq = ++this.sentSeq;
    const bitmap = v.log.bitmap,
      first = bitmap.regionOf(offset),
      last = bitmap.regionOf(offset + len - 1);
    const n = this.pending.size;
    assert(n === 0 || this.pending.seqs[this.pending.slot(n - 1)] === seq - 1, 'pending writes are in seq order');
    this.pending.push(seq, v.index, first, last, offset, len);
    const regionSeq = this.regionSeq[v.index];
    for (let r = first; r <= last; r++) regionSeq.set(r, seq);
    const head = encodeProtectedWriteHead(volumeId, offset / SECTOR, len / SECTOR, IO_OK);
    if (Array.isArray(data)) link.send([head, ...data]);
    else if (this.writePool.hold(data)) link.send([head, data], () => this.writePool.give(data));
    else link.send([head, data]);
    this.stats.mirroredBytes += len;
    if (queued + len > this.queueHoldBytes) this.queueHigh();
  }

  /**
   * A guest flush: tell the hub which writes it covers (FLUSH capability), now, or when the gap
   * since the last marker ends (FLUSH_MARKER_GAP_MS), in one marker with the flushes meanwhile.
   */
  flush(): void {
    if (this.link === null || !this.link.has(Cap.FLUSH) || this.markerTimer !== null) return;
    const wait = this.lastMarkerAt + this.markerGapMs - performance.now();
    if (wait <= 0) return this.sendMarker();
    this.markerTimer = setTimeout(this.markerDue, Math.ceil(wait));
  }

  /** The marker owed to flushes inside the gap, now (a clean stop). */
  markerNow(): void {
    if (this.markerTimer === null) return;
    clearTimeout(this.markerTimer);
    this.markerDue();
  }

  /**
   * The marker tells the hub its copy is at a point the guest flushed. A write that overflowed
   * (or a zeroing) before the flush reaches the hub only as an owed region: its report must go
   * first, so that the hub, resyncing, takes no point over it. If some cannot leave yet (the last
   * report not acked, the queue too long), this flush gets no point: a later one will.
   */
  private sendMarker(): void {
    if (this.link === null || !this.overflow.reportOwedNow()) return;
    this.lastMarkerAt = performance.now();
    this.link.send([encodeFlush(this.sentSeq)]);
  }

  /**
   * WRITE_APPLIED: every write up to `seq` is on the recovery volume, not yet durable. Counts
   * their bytes drained for the backlog bound; clears nothing (the dirty bits wait for the ack).
   */
  onApplied(seq: number): void {
    if (seq > this.sentSeq) {
      throw new ProtocolError(`WRITE_APPLIED ${seq} beyond the ${this.sentSeq} writes sent on this connection`);
    }
    if (seq <= this.appliedSeq) return; // an ack said as much already
    this.appliedSeq = seq;
    const pending = this.pending;
    let k = this.appliedCount;
    for (; k < pending.size; k++) {
      const i = pending.slot(k);
      if (pending.seqs[i] > seq) break;
      this.appliedBytes += pending.lens[i];
    }
    this.appliedCount = k;
  }

  /** POINT from the hub (cap POINT): mark a consistent point of the stream, now or once it can. */
  pointRequested(): void {
    this.pointWanted = true;
    this.sendPoint();
  }

  /** A DIRTY_REPORT was acked: a POINT waiting for room to report may go now. */
  retryPoint(): void {
    if (this.pointWanted) this.sendPoint();
  }

  /** The POINT the hub asked for, behind the reports of everything owed (SPEC 7.4), or later. */
  private sendPoint(): void {
    if (this.link === null || !this.pointWanted) return;
    if (!this.overflow.reportOwedNow()) {
      if (this.pointTimer === null) this.pointTimer = setTimeout(this.pointDue, POINT_RETRY_MS);
      return;
    }
    if (this.pointTimer !== null) clearTimeout(this.pointTimer);
    this.pointTimer = null;
    this.pointWanted = false;
    this.link.send([encodePoint(this.sentSeq)]);
  }

  /** WRITE_ACK: the hub holds every write up to `seq` durably. */
  onAck(seq: number): void {
    if (seq > this.sentSeq) {
      throw new ProtocolError(`WRITE_ACK ${seq} beyond the ${this.sentSeq} writes sent on this connection`);
    }
    this.onApplied(seq); // durable is applied too
    const pending = this.pending;
    while (pending.size > 0) {
      const i = pending.slot(0),
        s = pending.seqs[i];
      if (s > seq) break;
      const v = this.volumes.list[pending.volumes[i]],
        first = pending.firsts[i],
        last = pending.lasts[i],
        offset = pending.offsets[i],
        len = pending.lens[i];
      pending.shift();
      assert(this.appliedCount > 0, 'acked writes were counted applied first');
      this.appliedCount--;
      this.ackedBytes += len;
      this.overflow.acked(v, offset, offset + len);
      const regionSeq = this.regionSeq[v.index];
      for (let r = first; r <= last; r++) {
        const newest = regionSeq.get(r);
        assert(newest !== undefined && newest >= s, 'a region in flight names its newest write');
        if (newest !== s) continue; // a later write to it still pends
        regionSeq.delete(r);
        this.gate.clearIfQuiet(v, r);
      }
    }
  }
}
