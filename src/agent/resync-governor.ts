// The resync controller (DRBD's c-plan-ahead, in the LEDBAT manner): resync answers (the hub's
// remote reads and checksums) leave at an adaptive rate so that the queue they build on the
// link, which every mirrored write behind them waits in, stays near TARGET_DELAY_MS. Owns that
// rate, the answers held back by it, and the delay samples.
//
// Why here and not on the hub: the agent is the sender on the link that fills up. It measures
// the queueing delay a write sent now would see directly, as the round trip of a PING (the same
// socket, the same proxy or router queue, the hub's intake) minus the smallest round trip seen
// lately; the hub's own RPO lag starts when a write arrives, so it cannot see the link's queue,
// and a hub-side window would need the link rate, which only the sender knows. No wire change:
// PING carries a millisecond timestamp already (SPEC 5.15). Mirrored writes never pass through
// here: the write path is not touched.
//
// Limits: answers held at most maxRemoteIo (a remote IO's slot is held until its answer has
// left, remote-io.ts); rate between `floorRate` (resync always progresses: c-min-rate) and
// `ceilRate` (c-max-rate).
import { assert } from '../assert';

export interface GovernorOptions {
  floorRate: number; // bytes/s resync always gets
  ceilRate: number; // bytes/s at most (0: no ceiling)
  targetDelayMs?: number;
  /** Bytes the guest's writes put on the link so far (a counter): with the answers, what the link carried. */
  guestBytes?: () => number;
  /** The guest's writes so far (a counter): unchanged between two samples means no write to protect. */
  guestWrites?: () => number;
  /**
   * Whether the backlog bound (lag-bound.ts) holds the guest's write replies now: the guest then
   * waits for these very answers (its overflowed writes), so they leave at the ceiling, not at a
   * rate cut to protect its writes' queue. Issue 17: at the floor's rate after a 1 MiB job the
   * held guest and an idle link waited on each other (2 MiB/s, a delay probe per answer).
   */
  guestHeld?: () => boolean;
  /** The ACK-clocked opening (default on): off where a PING does not follow the answers in order. */
  opening?: boolean;
  now?: () => number; // ms clock (tests)
  setTimer?: (fn: () => void, ms: number) => unknown;
  clearTimer?: (t: unknown) => void;
}

/** Where answers go out: the pacer (its resync class) or the link. */
export interface BulkOut {
  send(bufs: Buffer[], done?: () => void): void;
  sendBulk?(bufs: Buffer[], done?: () => void): void;
}

interface Held {
  out: BulkOut;
  bufs: Buffer[];
  done: (() => void) | undefined;
  bytes: number;
}

export const TARGET_DELAY_MS = 100; // queueing delay resync may add to a write
export const PROBE_MS = 100; // a delay probe this often while resync flows
const ACTIVE_MS = 1000; // resync counts as flowing this long after its last answer
const BASE_EPOCH_MS = 10_000; // the base round trip is the least of the last two epochs
const START_RATE_FLOORS = 2; // start at twice the floor, then grow while the queue stays short
const GAIN = 0.1; // growth per sample near the target delay
// Below a quarter of the target the link shows no queue: the rate doubles per sample (TCP's slow
// start), so after a burst of mirrored writes cut it to the floor, resync is back at the link's
// speed within a second instead of ~6 s of 10 % steps (issue 17: copies equal 12 s after a
// 1 MiB write job that overflowed, 2 s without the governor). An overshoot shows in the next
// sample's delay and is cut there.
const SLOW_START_BELOW = 0.25;
// No guest write since the last delay sample: nothing waits behind resync on the link but the
// hub's reads, so the probes come every IDLE_PROBE_MS instead of PROBE_MS and slow start doubles
// once per round trip (not per 100 ms): on loopback resync is back at full speed ~200 ms after
// the guest's job instead of 1-1.3 s (issue 17: copies equal 2.4-3.1 s after mirror-bench's
// 1 MiB job, QEMU's background mirror 0.5-0.6 s). Doubling per round trip bounds the overshoot
// on a slow link as TCP's slow start does. Not less than 20 ms: at 5 ms a 1 GiB initial sync on
// loopback reached protecting 0.3 s sooner, but on a 5 MiB/s link, whose PINGs came back in
// 1 ms between bursts, the rate ran ahead of the link and a mirrored write waited 2.5 s
// (bandwidth.e2e). The first guest write seen restores the rate from before (or less, after a cut).
const IDLE_PROBE_MS = 20;
// The opening of a resync with the guest idle (a new connection's initial sync, or resync
// starting after a pause) is ACK-clocked as TCP's slow start is: a bare PING ahead of the first
// answers measures the link's own round trip (the base), another leaves right behind them; if
// that one comes back without a queue, what was sent before it has crossed, so the token debt
// is dropped, the rate doubles and the next answers leave at once with the next PING behind
// them, one step per round trip. The first sample with a queue, a guest write or the ceiling
// ends the opening: a slow link shows itself behind the first answer (1 MiB at 5 MiB/s: 200 ms).
// Off under a pacer (--max-rate), which sends PINGs and answers in different classes. Without it
// a 1 GiB initial sync on loopback spent ~280 ms reaching the link's rate, one doubling per
// IDLE_PROBE_MS; with it ~40 ms (test/bandwidth.test.ts models a slow and a fast link).
// The base round trip is measured on an idle link: a bare PING as each connection starts (before
// the dirty report and any mirrored write), and one per BASE_PROBE_MS while the link is idle (the
// core asks, linkIdle()). Without them the first samples of a connection whose first traffic is
// a burst of writes (a thin volume in sync at once, a reconnect with writes queued) came from the
// backlog bound's PINGs behind that burst: the queue was taken for the base, the governor saw no
// delay and the bound counted seconds of queue as link latency (lag-bound.e2e, issue 17 HOLES).
const BASE_PROBE_MS = BASE_EPOCH_MS / 2;
// The link's rate, from what it delivered: a PONG says every byte sent before its PING has
// crossed, so bytes between two PONGs over the time between them is a delivery sample (BBR's).
// A sample taken with a queue measures the link; one without measures what was sent, a floor
// for the link. Once a queued sample has been seen, the highest of the last one or two
// LINK_EPOCH_MS windows, queued or not, caps the rate's growth at LINK_GAIN of it: the idle
// guest's slow start, probing every IDLE_PROBE_MS on a link whose PINGs slip between answers,
// otherwise doubled with nothing crossing and queued ~1-2.5 s of answers on a model 5 MiB/s link.
// The gain over 1 lets a link that got faster be found, the samples without queue following the
// rate up; a low sample (a stall: retransmit timeout, hub in GC) ages out; cuts take queues back.
// Off where PINGs do not follow the answers in order (the pacer: a PONG says nothing of them).
const LINK_EPOCH_MS = 5000;
const LINK_GAIN = 1.25;
const DELIVERY_MIN_MS = 10; // PONGs closer than this (a bunch behind one answer) make no sample
const PROBES_KEPT = 256; // probes whose PONG may still come: 5 s of them at IDLE_PROBE_MS
const CUT_EVERY_MAX_MS = 300; // cut at least this often while the delay stays over target
const MAX_RATE = 2 ** 32; // no ceiling given: still a number (4 GiB/s)
const BURST_MS = 20;
const MAX_HELD = 4096; // answers held; remote IO's slots bound it far lower

export class ResyncGovernor {
  rate: number;
  private tokens = 0;
  private tokensAt: number;
  private readonly held: Held[] = [];
  private heldBytes = 0;
  private timer: unknown = null;
  private lastAnswerAt = -Infinity;
  private lastProbeAt = -Infinity;
  private lastCutAt = -Infinity;
  private baseEpochAt: number;
  private baseNow = Infinity;
  private basePrev = Infinity;
  /** The newest sample: round trip and queueing delay (ms). */
  rttMs: number | null = null;
  delayMs: number | null = null;
  cuts = 0;
  sentBytes = 0;
  idleBoosts = 0;
  private lastWrites = -1; // guest writes at the last sample
  private busyRate = 0; // the rate before the guest went idle (0: not idle)
  private lastGrowAt = -Infinity;
  private lastBaseProbeAt = -Infinity;
  // delivery samples (see LINK_EPOCH_MS)
  private readonly probesSent: { nonce: number; bytes: number }[] = [];
  private deliveredBytes = -1; // link bytes known to have crossed at deliveredAt (-1: none yet)
  private deliveredAt = 0;
  private linkNow = 0;
  private linkPrev = 0;
  private linkEpochAt = 0;
  private opening: boolean; // the resync's opening, ACK-clocked (see above)
  private openingProbeAt: number | null = null; // its PING in flight, sent behind answers
  /**
   * Sends a PING at `at` (this clock's now), returning its nonce (a ms timestamp, unique: when not
   * `at`, a ms later); null without the PING capability.
   */
  probe: ((at: number) => number | void) | null = null;
  private readonly target: number;
  private readonly ceil: number;
  private readonly now: () => number;
  private readonly setTimer: (fn: () => void, ms: number) => unknown;
  private readonly clearTimer: (t: unknown) => void;
  private readonly wake = (): void => {
    this.timer = null;
    this.release();
  };

  constructor(readonly opts: GovernorOptions) {
    assert(opts.floorRate > 0, 'resync always has a positive floor rate');
    this.ceil = opts.ceilRate > 0 ? opts.ceilRate : MAX_RATE;
    assert(this.ceil >= opts.floorRate, 'the resync ceiling is not below its floor');
    this.target = opts.targetDelayMs ?? TARGET_DELAY_MS;
    this.now = opts.now ?? (() => Date.now());
    this.setTimer = opts.setTimer ?? ((fn, ms) => setTimeout(fn, ms));
    this.clearTimer = opts.clearTimer ?? ((t) => clearTimeout(t as NodeJS.Timeout));
    this.rate = Math.min(this.ceil, opts.floorRate * START_RATE_FLOORS);
    this.opening = this.openingAllowed();
    this.tokensAt = this.baseEpochAt = this.now();
  }

  /**
   * A connection is ready and nothing is on it yet: its round trip is measured from scratch (it
   * may be another hub) by a bare PING, sent now, ahead of everything else.
   */
  attach(): void {
    this.baseNow = this.basePrev = Infinity;
    this.baseEpochAt = this.now();
    this.probesSent.length = 0; // and its rate
    this.deliveredBytes = -1;
    this.linkNow = this.linkPrev = 0;
    this.baseProbe();
  }

  /** The link is idle now (the core's sample tick): the base is measured again if it is old. */
  linkIdle(): void {
    // answers held back (at the floor's rate one may wait over ACTIVE_MS) will follow: not idle
    if (this.now() - this.lastBaseProbeAt >= BASE_PROBE_MS && !this.active() && this.held.length === 0)
      this.baseProbe();
  }

  private baseProbe(): void {
    if (this.probe === null) return;
    this.lastBaseProbeAt = this.now();
    this.sendProbe(this.lastBaseProbeAt);
  }

  /** A PING now, remembered with the bytes the link carried before it; its nonce. */
  private sendProbe(at: number): number {
    const nonce = this.probe!(at) ?? at;
    if (this.probesSent.length === PROBES_KEPT) this.probesSent.shift();
    this.probesSent.push({ nonce, bytes: this.linkBytes() });
    return nonce;
  }

  private linkBytes(): number {
    return this.sentBytes + (this.opts.guestBytes?.() ?? 0);
  }

  /** The link's measured rate (bytes/s; 0: not measured with a queue lately). */
  get linkRate(): number {
    return Math.max(this.linkNow, this.linkPrev);
  }

  /** The PONG of one of our probes: one delivery sample; `queued`: it came back behind a queue. */
  private delivered(nonce: number, now: number, queued: boolean): void {
    if (this.opts.opening === false) return; // PINGs do not follow the answers (see LINK_EPOCH_MS)
    const i = this.probesSent.findIndex((p) => p.nonce === nonce);
    if (i < 0) return; // not a probe of ours (a heartbeat, the backlog bound's), or dropped
    const bytes = this.probesSent[i].bytes;
    this.probesSent.splice(0, i + 1); // older ones: lost with a reconnect, or their PONG came first
    if (this.deliveredBytes < 0 || bytes < this.deliveredBytes) {
      this.deliveredBytes = bytes;
      this.deliveredAt = now;
      return;
    }
    const dt = now - this.deliveredAt;
    if (dt < DELIVERY_MIN_MS) return; // a bunch of PONGs: the next sample spans them
    const rate = ((bytes - this.deliveredBytes) * 1000) / dt;
    this.deliveredBytes = bytes;
    this.deliveredAt = now;
    this.linkAge(now);
    // without a queue this measured the sender: it raises a known link rate, never starts one
    if (queued || this.linkRate > 0) this.linkNow = Math.max(this.linkNow, rate);
  }

  /** The windows of delivery samples moved on to `now` (samples older than two are dropped). */
  private linkAge(now: number): void {
    if (now - this.linkEpochAt <= LINK_EPOCH_MS) return;
    this.linkPrev = now - this.linkEpochAt <= 2 * LINK_EPOCH_MS ? this.linkNow : 0;
    this.linkNow = 0;
    this.linkEpochAt = now;
  }

  /** `rate` grown to `to`, but not past LINK_GAIN of the link's measured rate nor the ceiling. */
  private grow(to: number): void {
    this.linkAge(this.now());
    const link = this.linkRate;
    const cap = link > 0 ? Math.max(this.opts.floorRate, LINK_GAIN * link) : Infinity;
    this.rate = Math.max(this.rate, Math.min(this.ceil, to, cap));
  }

  /** The lowest recent PING round trip (ms; 0 before the first): the link's own latency, no queue. */
  get baseRttMs(): number {
    const base = Math.min(this.baseNow, this.basePrev);
    return base === Infinity ? 0 : base;
  }

  /** One resync answer: out now if the rate allows, else held in order. */
  send(out: BulkOut, bufs: Buffer[], done?: () => void): void {
    let bytes = 0;
    for (const b of bufs) bytes += b.length;
    assert(this.held.length < MAX_HELD, 'resync answers held are bounded by the remote IO slots');
    this.held.push({ out, bufs, done, bytes });
    this.heldBytes += bytes;
    // Resync (re)starts: the guest's writes are counted from here, so the first delay sample
    // can already tell an idle guest (and probe and grow at the idle pace).
    if (!this.active()) {
      if (this.opts.guestWrites) this.lastWrites = this.opts.guestWrites();
      this.opening = this.openingAllowed();
      this.openingProbeAt = null;
      // A bare PING first, ahead of the answers: its round trip is the link's own, the base the
      // opening's samples are measured against (without one, the first sample is its own base).
      if (this.opening && this.probe !== null && Math.min(this.baseNow, this.basePrev) === Infinity)
        this.sendProbe(this.now());
    }
    this.lastAnswerAt = this.now();
    this.release();
  }

  /** The opening may run: configured so, and the guest's writes are known (it must be idle). */
  private openingAllowed(): boolean {
    return this.opts.opening !== false && this.opts.guestWrites !== undefined;
  }

  /** Resync flows: an answer came within ACTIVE_MS. */
  private active(): boolean {
    return this.now() - this.lastAnswerAt <= ACTIVE_MS;
  }

  /** Ms until the next delay probe is due (resync flows and the last probe is PROBE_MS old). */
  private probeIn(): number {
    if (this.probe === null || !this.active()) return Infinity;
    const every = this.busyRate > 0 ? IDLE_PROBE_MS : PROBE_MS;
    return Math.max(0, this.lastProbeAt + every - this.now());
  }

  /** A PONG for a PING sent at `sentAt` (ms, this clock): one delay sample; the rate follows it. */
  sample(sentAt: number): void {
    const now = this.now();
    if (!(now - sentAt >= -5 && now - sentAt < 60_000)) return; // not one of ours, or from another clock
    const rtt = Math.max(0, now - sentAt); // a nonce may be a ms or two ahead (link/ping-nonce.ts)
    if (now - this.baseEpochAt > BASE_EPOCH_MS) {
      this.basePrev = this.baseNow;
      this.baseNow = Infinity;
      this.baseEpochAt = now;
    }
    const hadBase = Math.min(this.baseNow, this.basePrev) !== Infinity; // before this sample
    this.baseNow = Math.min(this.baseNow, rtt);
    const delay = rtt - Math.min(this.baseNow, this.basePrev);
    this.rttMs = rtt;
    this.delayMs = delay;
    this.delivered(sentAt, now, delay > SLOW_START_BELOW * this.target);
    this.idle(delay);
    if (this.opening && sentAt === this.openingProbeAt) {
      this.openingProbeAt = null; // the next answers carry the next one
      if (!hadBase) {
        // measured against itself: no verdict (the bare PING ahead of the answers sets the base)
      } else if (this.busyRate > 0 && delay <= SLOW_START_BELOW * this.target) {
        this.tokens = Math.max(0, this.tokens); // what left before it has crossed
        this.grow(this.rate * 2);
        this.opening = this.rate < this.ceil; // at the ceiling: nothing left to find
        this.lastGrowAt = now;
        this.release();
        return;
      } else this.opening = false; // a queue, or the guest writes: the delay control from here on
    }
    if (delay > this.target) {
      // Once per round trip (the samples right after a cut still see the queue it drains), but
      // a long queue is cut again soon; the cut is deeper the further the delay is over target.
      if (now - this.lastCutAt < Math.min(Math.max(rtt, PROBE_MS), CUT_EVERY_MAX_MS)) return;
      this.lastCutAt = now;
      this.cuts++;
      this.rate = Math.max(this.opts.floorRate, this.rate * Math.max(0.1, Math.min(0.7, this.target / delay)));
    } else if (this.active()) {
      const slowStart = delay <= SLOW_START_BELOW * this.target;
      if (slowStart && now - this.lastGrowAt < Math.max(rtt, IDLE_PROBE_MS)) return; // once per round trip
      this.lastGrowAt = now;
      const growth = slowStart ? 2 : 1 + GAIN * (1 - delay / this.target);
      this.grow(this.rate * growth);
      this.rearm();
    }
  }

  /** The guest went idle (no write since the last sample, no queue) or wrote again (the old rate back). */
  private idle(delay: number): void {
    const writes = this.opts.guestWrites ? this.opts.guestWrites() : -1,
      quiet = writes >= 0 && writes === this.lastWrites;
    this.lastWrites = writes;
    if (!quiet) {
      if (this.busyRate > 0) this.rate = Math.min(this.rate, this.busyRate);
      this.busyRate = 0;
    } else if (this.busyRate === 0 && delay <= SLOW_START_BELOW * this.target) {
      this.busyRate = this.rate;
      this.idleBoosts++;
    }
  }

  /** The rate grew: answers held for the old rate's timer go by the new one. */
  private rearm(): void {
    if (this.timer === null) return;
    this.clearTimer(this.timer);
    this.timer = null;
    this.release();
  }

  /** The connection ended: held answers are released unsent (the hub reads them again). */
  detach(): void {
    if (this.timer !== null) this.clearTimer(this.timer);
    this.timer = null;
    this.openingProbeAt = null; // its PONG is lost with the connection
    this.lastAnswerAt = -Infinity; // the next connection's resync starts anew (and opens)
    const held = this.held.splice(0);
    this.heldBytes = 0;
    for (const h of held) h.done?.();
  }

  /** The guest's replies are held now (guestHeld): answers waiting for the old rate go at once. */
  kick(): void {
    this.rearm();
  }

  private release(): void {
    const rate = this.opts.guestHeld?.() ? this.ceil : this.rate;
    let sent = 0;
    const now = this.now(),
      burst = Math.max(256 << 10, (rate * BURST_MS) / 1000);
    this.tokens = Math.min(burst, this.tokens + ((now - this.tokensAt) * rate) / 1000);
    this.tokensAt = now;
    while (this.held.length > 0 && this.tokens >= 0) {
      const h = this.held.shift()!;
      this.heldBytes -= h.bytes;
      this.tokens -= h.bytes;
      this.sentBytes += h.bytes;
      sent += h.bytes;
      if (h.out.sendBulk) h.out.sendBulk(h.bufs, h.done);
      else h.out.send(h.bufs, h.done);
    }
    if (this.opening && sent > 0 && this.openingProbeAt === null && this.probe !== null) {
      this.lastProbeAt = now;
      this.openingProbeAt = this.sendProbe(now); // right behind the answers just sent: it measures them
    } else if (this.probeIn() === 0) {
      this.lastProbeAt = now;
      this.sendProbe(now);
    }
    if (this.held.length > 0 && this.timer === null) {
      // Wake for the next probe too: answers held at a low rate would otherwise wait out their
      // tokens unprobed, and the rate grows only on probes (issue 17: a 1 GiB initial sync spent
      // its first 0.4 s at 2-8 MiB/s, one 1 MiB answer per token timer).
      const wait = Math.min(Math.ceil((-this.tokens * 1000) / rate), this.probeIn());
      this.timer = this.setTimer(this.wake, Math.max(1, wait));
    }
  }

  status() {
    return {
      rateBytesPerSec: Math.round(this.rate),
      floorBytesPerSec: this.opts.floorRate,
      ceilBytesPerSec: this.opts.ceilRate,
      targetDelayMs: this.target,
      rttMs: this.rttMs,
      linkBytesPerSec: Math.round(this.linkRate),
      baseRttMs: this.baseRttMs,
      queueDelayMs: this.delayMs,
      cuts: this.cuts,
      idleBoosts: this.idleBoosts,
      guestIdle: this.busyRate > 0,
      sentBytes: this.sentBytes,
      heldBytes: this.heldBytes,
    };
  }
}
