// When a guest flush may run the image's fdatasync on the event loop instead of the threadpool.
// On this kind of VM each thread handoff (the worker's wakeup, the eventfd back to the loop)
// costs 80-140 us of wake latency, and a guest that flushes after every write (a database)
// waits on both: a third of a fast fdatasync (issue 17, `perf trace` of the agent at qd1).
// Blocking the loop is worth it only while the device syncs fast: a sync slower than `slowMs`
// (or failing), on the loop or in the threadpool, sends every flush to the threadpool for the
// backoff, so a slow or busy disk stalls the loop at most once per backoff. The backoff starts
// short and doubles with each slow sync on the loop, up to a second; a fast one on the loop
// resets it. A fixed second kept 9 flushes in 10 off the loop beside a hub on the same disk,
// whose group commit makes one guest sync in a few hundred slow (issue 17). The NBD server
// asks only when the flush is its one request in flight (transmission.ts): no guest request is
// queued behind it, though the hub link, new requests and /status wait for the sync.

/** Default --loop-flush-max: a sync slower than this (ms) keeps flushes off the event loop. */
export const SYNC_FLUSH_SLOW_MS = 4;
/** How long (ms) after a slow sync every flush goes through the threadpool: at first, and at most. */
export const BACKOFF_MIN_MS = 25;
export const BACKOFF_MAX_MS = 1000;

/** Where the policy counts (AgentStats' fields). */
export interface SyncFlushStats {
  loopFlushes: number;
  slowFlushes: number;
}

export class SyncFlushPolicy {
  private offUntil = 0; // performance.now() before which flushes stay in the threadpool
  private backoff = BACKOFF_MIN_MS; // the next slow sync's

  /** `slowMs` 0: never on the event loop. */
  constructor(
    private readonly stats: SyncFlushStats | null,
    private readonly slowMs = SYNC_FLUSH_SLOW_MS,
  ) {
    if (!(slowMs >= 0)) throw new RangeError(`loop flush limit ${slowMs} ms: must be >= 0`);
  }

  /** May the next flush run its sync on the event loop (at `now`, performance.now())? */
  allowed(now: number): boolean {
    return this.slowMs > 0 && now >= this.offUntil;
  }

  /** A sync from `start` to `end` (performance.now()), on the loop or in the threadpool. */
  took(start: number, end: number, onLoop: boolean): void {
    if (onLoop && this.stats) this.stats.loopFlushes++;
    if (end - start <= this.slowMs) {
      if (onLoop) this.backoff = BACKOFF_MIN_MS;
      return;
    }
    if (this.stats) this.stats.slowFlushes++;
    this.offUntil = Math.max(this.offUntil, end + this.backoff);
    // Only a slow sync on the loop stalled it: that one grows the wait before the next try.
    if (onLoop) this.backoff = Math.min(BACKOFF_MAX_MS, this.backoff * 2);
  }

  /** A sync on the loop failed at `at`: a failing device gets the threadpool's flushes for the longest backoff. */
  failed(at: number): void {
    if (this.stats) this.stats.slowFlushes++;
    this.backoff = BACKOFF_MAX_MS;
    this.offUntil = at + BACKOFF_MAX_MS;
  }
}
