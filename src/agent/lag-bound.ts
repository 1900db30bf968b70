// The backlog bound (--max-lag, 500 ms by default): how far the hub's copy may fall behind, in
// time. The backlog is what the copies would still wait for if the guest stopped now: mirrored
// bytes the hub has not applied yet plus owed regions (overflowed or zeroed writes) the hub has
// not read back. While it is more than --max-lag of the measured drain rate (applied + answered
// bytes per second), the NBD reply of a write is held (never the write itself: it is on the
// image and mirrored or owed already), as DRBD's congestion control and QEMU's active mirror pace
// the guest. Writes under the bound are never held: the write path checks one boolean, `over`.
//
// The drain is what the hub APPLIED (WRITE_APPLIED, cap APPLIED, batched every 5 ms by its group
// commit), not what it made durable: the copies are equal once the hub applied, and draining on
// the durable acks paced the guest to the hub's fdatasyncs (on one shared disk, 714 -> 130 MiB/s).
// Durability is not touched: dirty bits still wait for WRITE_ACK (mirror.ts, region-gate.ts).
// Against a hub without the cap, the acks are the drain (an ack says applied too).
//
// Replies are held too while more than half the link's queue waits (`queueHoldBytes`), however
// long --max-lag allows: a write past the queue is owed as its whole region (mirror.ts),
// and the hub reads 64 KiB back for a 4 KiB write. A brief hub hiccup at 50,000 writes/s filled
// the 64 MiB queue well inside 500 ms of drain, and the read-backs then kept the hub behind, so
// the queue stayed full: half the IOPS for the rest of the job (issue 17, BENCHMARKS Round 22).
// Holding at half the queue paces the guest to the hub instead, as DRBD's on-congestion=block.
//
// Owns the drain-rate estimate, `over`, and the replies held (a bounded FIFO). The backlog's
// parts are read from their owners (mirror.ts: unapplied bytes; handover.ts: owed, unread bytes).
//
// What never drains is not waited for: a reply waits at most `waitCapMs`; with nothing drained
// and nothing heard from the hub for `stallMs` (a stalled link: while it holds, the core PINGs
// every 100 ms, so a live hub is heard even when its disk is slow; and a hub that applies
// anything says so every 5 ms, even while a PONG queues behind MiBs of writes on a slow link)
// nothing is held; and owed regions of a volume the hub has not read for `waitCapMs` (paused by
// the operator, or the hub busy elsewhere) leave the backlog (handover.ts). With the link down
// nothing is held: detach() releases every held reply and the dirty log keeps what the hub missed.
import { assert } from '../assert';
import { SAMPLE_MS } from './ack-lag';

/** The backlog's parts and the drain's counters, from their owners. */
export interface LagSources {
  /** Mirrored bytes sent (or queued) on this connection and not applied (or acked) yet. */
  unackedBytes(): number;
  /** Owed bytes not read back yet, volumes whose read-back stalled left out (at `now`, ms). */
  owedBytes(now: number): number;
  /** Bytes drained so far: applied (or acked) mirrored bytes + answered read bytes (a counter; only grows). */
  drainedBytes(): number;
  /** The link's base round trip, ms (0 unknown): bytes in flight for that long are not a backlog. */
  baseRttMs(): number;
  /** Bytes waiting on the link's queue, not yet with the kernel (the mirror owes past its limit). */
  queuedBytes(): number;
}

export interface LagBoundOptions {
  maxLagMs: number; // 0: off
  /** Hold also while more than this waits on the link's queue (half of it); absent: no such hold. */
  queueHoldBytes?: number;
  /** Called when it starts holding (the resync governor lets its held answers go: resync-governor.ts). */
  onHolding?: () => void;
  now?: () => number; // ms clock (tests)
  setTimer?: (fn: () => void, ms: number) => unknown;
  clearTimer?: (t: unknown) => void;
}

interface Held {
  release: () => void;
  since: number;
}

// Nothing drained or heard for --max-lag (within these): the link counts as stalled (see above).
// A reply held that long on a link that stalls is what a guest notices (network-faults.e2e: a
// write under 1 s through a 3 s stall).
const STALL_MIN_MS = 250;
const STALL_MAX_MS = 1000;
// Below this the bound never holds: a few large writes in flight are not a backlog, and before
// the first measurement the rate is unknown.
export const MIN_BOUND_BYTES = 2 << 20;
const WAIT_CAP_LAGS = 4; // a reply waits at most this many --max-lag (the guest never hangs)
const WAIT_CAP_MIN_MS = 1000;
const ALPHA = 0.3; // smoothing of the drain rate per sample
// The bound takes the highest smoothed drain of the last PEAK_SAMPLES samples (BBR's max filter):
// a link whose latency steps up delivers nothing for one new round trip, and a hold's own pause
// shows in the drain a round trip later. Followed down at once, either dip shrank the bound
// under the bytes merely in flight, and holds fed the dip (CI: a write held 1 s when the fault
// proxy's delay went 0 -> 400 ms). A link that really slowed is followed within the window.
const PEAK_SAMPLES = 10; // 1 s of SAMPLE_MS
const MAX_HELD = 4096; // replies held; NBD's requests in flight bound it far lower

export class LagBound {
  /** The write path's one check: replies of writes are held while true. */
  over = false;
  readonly maxLagMs: number;
  readonly waitCapMs: number;
  readonly stallMs: number;
  readonly queueHoldBytes: number;
  private connected = false;
  private rate = 0; // the bound's drain rate, bytes/s: the peak of `peaks` (0: not measured yet)
  private smooth = 0; // the smoothed drain, bytes/s
  private readonly peaks = new Float64Array(PEAK_SAMPLES); // `smooth` at the last samples
  private peakAt = 0;
  private held: Held[] = [];
  private heldHead = 0;
  private timer: unknown = null;
  private sampleAt = 0;
  private sampleDrained = 0;
  private sampleBacklog = 0;
  private wasOver = false; // over at some point since the last sample
  private drainedSeen = 0;
  private lastDrainAt = 0;
  private lastHeardAt = 0;
  private backlog = 0;
  private bound = MIN_BOUND_BYTES;
  private stalled = false;
  private drainsOn: 'applied' | 'acked' = 'acked'; // what the hub says drained (for /status)
  // counters for /status
  heldWrites = 0;
  cappedWrites = 0;
  queueHolds = 0; // times it started holding for the queue, under the time bound
  stalls = 0; // times a stalled link ended a hold
  maxOverBytes = 0;
  maxWaitMs = 0;
  private readonly onHolding: (() => void) | undefined;
  private readonly now: () => number;
  private readonly setTimer: (fn: () => void, ms: number) => unknown;
  private readonly clearTimer: (t: unknown) => void;
  private readonly onCap = (): void => {
    this.timer = null;
    this.releaseExpired();
  };

  constructor(
    private readonly sources: LagSources,
    opts: LagBoundOptions,
  ) {
    assert(opts.maxLagMs >= 0, 'the lag bound is a duration');
    this.maxLagMs = opts.maxLagMs;
    this.waitCapMs = Math.max(WAIT_CAP_MIN_MS, WAIT_CAP_LAGS * opts.maxLagMs);
    this.stallMs = Math.min(STALL_MAX_MS, Math.max(STALL_MIN_MS, opts.maxLagMs));
    assert(opts.queueHoldBytes === undefined || opts.queueHoldBytes > 0, 'the queue hold is a byte count');
    this.queueHoldBytes = Math.max(MIN_BOUND_BYTES, opts.queueHoldBytes ?? Infinity);
    this.onHolding = opts.onHolding;
    this.now = opts.now ?? (() => Date.now());
    this.setTimer = opts.setTimer ?? ((fn, ms) => setTimeout(fn, ms));
    this.clearTimer = opts.clearTimer ?? ((t) => clearTimeout(t as NodeJS.Timeout));
  }

  /** A frame came from the hub (an ack, an answer's request, a PONG): the link is alive. */
  heard(): void {
    this.lastHeardAt = this.now();
  }

  /** A connection is ready: measure its drain from scratch (it may be another hub); `applied`: cap APPLIED. */
  attach(applied = false): void {
    this.drainsOn = applied ? 'applied' : 'acked';
    this.connected = this.maxLagMs > 0;
    this.rate = this.smooth = 0;
    this.peaks.fill(0);
    this.sampleAt = this.lastDrainAt = this.now();
    this.sampleDrained = this.drainedSeen = this.sources.drainedBytes();
    this.sampleBacklog = this.backlog = 0;
  }

  /** The link is down: nothing drains, so nothing is held; the dirty log keeps what the hub missed. */
  detach(): void {
    this.connected = false;
    this.over = false;
    this.releaseAll();
  }

  /** The core's timer (ack-lag's SAMPLE_MS): one drain-rate sample, then the bound re-evaluated. */
  sample(): void {
    if (!this.connected) return;
    const now = this.now(),
      dt = now - this.sampleAt,
      drained = this.sources.drainedBytes();
    if (dt < SAMPLE_MS / 2) return;
    // Only while there was something to drain: an idle link says nothing of its speed. When more
    // waited at the end than went out (or replies were held) the link was the limit: the estimate
    // follows the drain, down too. Otherwise the guest's own pace was, and it only rises.
    this.update();
    if (this.sampleBacklog > 0) {
      const out = drained - this.sampleDrained,
        r = (out * 1000) / dt,
        next = this.smooth === 0 ? r : this.smooth + ALPHA * (r - this.smooth);
      this.smooth = this.wasOver || this.backlog > out ? next : Math.max(this.smooth, next);
      this.peaks[this.peakAt] = this.smooth;
      this.peakAt = (this.peakAt + 1) % PEAK_SAMPLES;
      let peak = 0;
      for (let i = 0; i < PEAK_SAMPLES; i++) peak = Math.max(peak, this.peaks[i]);
      this.rate = peak;
      this.update(); // the bound at the new rate
    }
    this.sampleAt = now;
    this.sampleDrained = drained;
    this.wasOver = this.over;
    this.sampleBacklog = this.backlog;
  }

  /** Something drained or was added (an ack, an answer, an owed range): re-evaluate `over`. */
  update(): boolean {
    if (!this.connected) return false;
    const now = this.now(),
      drained = this.sources.drainedBytes();
    const before = this.backlog;
    this.backlog = this.sources.unackedBytes() + this.sources.owedBytes(now);
    // A stall is time without a drain while there is a backlog: a fresh one has not stalled.
    if (drained !== this.drainedSeen || before === 0) {
      this.drainedSeen = drained;
      this.lastDrainAt = now;
    }
    this.bound = Math.max(MIN_BOUND_BYTES, (this.rate * (this.maxLagMs + this.sources.baseRttMs())) / 1000);
    const stalled = this.backlog > 0 && now - Math.max(this.lastDrainAt, this.lastHeardAt) > this.stallMs;
    if (stalled && !this.stalled && this.over) this.stalls++;
    this.stalled = stalled;
    const was = this.over;
    const queueFull = this.sources.queuedBytes() > this.queueHoldBytes;
    this.over = !this.stalled && (this.backlog > this.bound || queueFull);
    if (this.over) {
      this.wasOver = true;
      if (!was && queueFull && this.backlog <= this.bound) this.queueHolds++;
      if (!was) this.onHolding?.();
    } else this.releaseAll();
    return this.over;
  }

  /** A write landed (write path, not the small-write fast path): whether its reply must wait. */
  wrote(): boolean {
    if (!this.connected) return false;
    const over = this.update();
    if (over) this.maxOverBytes = Math.max(this.maxOverBytes, this.backlog - this.bound);
    return over;
  }

  /** Hold a write's reply until the backlog is under the bound, the link goes down, or waitCapMs. */
  hold(): Promise<void> {
    if (!this.over || this.held.length - this.heldHead >= MAX_HELD) return Promise.resolve();
    this.heldWrites++;
    return new Promise((release) => {
      this.held.push({ release, since: this.now() });
      if (this.timer === null) this.timer = this.setTimer(this.onCap, this.waitCapMs);
    });
  }

  private releaseAll(): void {
    if (this.heldHead === this.held.length) return;
    if (this.timer !== null) this.clearTimer(this.timer);
    this.timer = null;
    const now = this.now();
    for (let i = this.heldHead; i < this.held.length; i++) this.let(this.held[i], now);
    this.held = [];
    this.heldHead = 0;
  }

  /** The cap: replies held waitCapMs go, the rest wait on (the next one's timer). */
  private releaseExpired(): void {
    const now = this.now();
    while (this.heldHead < this.held.length && now - this.held[this.heldHead].since >= this.waitCapMs) {
      this.cappedWrites++;
      this.let(this.held[this.heldHead++], now);
    }
    if (this.heldHead === this.held.length) {
      this.held = [];
      this.heldHead = 0;
      return;
    }
    const next = this.held[this.heldHead].since + this.waitCapMs - now;
    this.timer = this.setTimer(this.onCap, Math.max(1, next));
  }

  private let(h: Held, now: number): void {
    this.maxWaitMs = Math.max(this.maxWaitMs, now - h.since);
    h.release();
  }

  status() {
    return {
      maxLagMs: this.maxLagMs,
      waitCapMs: this.waitCapMs,
      holding: this.over,
      stalled: this.stalled,
      backlogBytes: this.backlog,
      boundBytes: Math.round(this.bound),
      queueHoldBytes: Number.isFinite(this.queueHoldBytes) ? this.queueHoldBytes : 0,
      queueHolds: this.queueHolds,
      drainBytesPerSec: Math.round(this.rate),
      drainNowBytesPerSec: Math.round(this.smooth),
      drainsOn: this.drainsOn,
      heldNow: this.held.length - this.heldHead,
      heldWrites: this.heldWrites,
      cappedWrites: this.cappedWrites,
      stalls: this.stalls,
      maxOverBytes: Math.round(this.maxOverBytes),
      maxWaitMs: this.maxWaitMs,
    };
  }
}
