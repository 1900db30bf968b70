// The hub's share of bandwidth control: --max-resync-rate, one cap on the resync bytes all of
// the hub's sessions receive (its own disk and intake budget; the link itself is the agent's to
// pace, agent/resync-governor.ts and link/pacer.ts), and each session's measured resync rate
// for /status and /metrics. Owns the cap's schedule and the meters.
import { assert } from '../assert';

/** The hub-wide cap: reads are issued only while the bytes answered so far fit the rate. */
export class ResyncRateLimit {
  private nextAt = 0;
  constructor(readonly bytesPerSecond: number) {
    assert(bytesPerSecond >= 0, 'a resync rate is not negative');
  }
  /** Milliseconds until another read may be issued (0: now). */
  wait(now: number): number {
    return this.bytesPerSecond === 0 ? 0 : Math.max(0, this.nextAt - now);
  }
  /** `bytes` crossed the link in an answer. */
  spend(bytes: number, now: number): void {
    if (this.bytesPerSecond > 0) this.nextAt = Math.max(now, this.nextAt) + (bytes * 1000) / this.bytesPerSecond;
  }
}

const WINDOW_MS = 2000; // a rate over the last two seconds, in two halves

/** Bytes per second over the last WINDOW_MS, from counts in two half windows (no per-sample memory). */
export class RateMeter {
  private at = 0; // start of the current half window
  private cur = 0;
  private prev = 0;
  total = 0;

  add(bytes: number, now: number): void {
    this.roll(now);
    this.cur += bytes;
    this.total += bytes;
  }

  rate(now: number): number {
    this.roll(now);
    const span = WINDOW_MS / 2 + Math.min(WINDOW_MS / 2, now - this.at);
    return Math.round(((this.prev + this.cur) * 1000) / span);
  }

  private roll(now: number): void {
    const half = WINDOW_MS / 2;
    if (now - this.at < half) return;
    this.prev = now - this.at < WINDOW_MS ? this.cur : 0;
    this.cur = 0;
    this.at = now - ((now - this.at) % half);
  }
}
