// Group commit for one agent session: the protected writes received, applied and acked
// (numbered 1, 2, ... per connection, the implicit sequence of the protocol), the recovery
// volumes written since their last flush, at most one flush round per commit interval, the
// durable WRITE_ACK after it, and the RPO lag (age of the oldest write not yet durable).
// With cap APPLIED it also tells the agent how far it has applied (WRITE_APPLIED, not durable):
// at most one frame per APPLIED_GAP_MS, none when a WRITE_ACK already said as much. The agent's
// backlog bound drains on it (agent/lag-bound.ts), so a guest is not paced to the hub's fdatasyncs.
import { Cap, encodeWriteAck, encodeWriteApplied } from '../../protocol';
import { assert } from '../assert';

/** A recovery volume a commit flushes (a Replica). */
export interface Flushable {
  flushRecovery(): Promise<void>;
}

/** Where acks go: a Link satisfies it. */
export interface AckLink {
  send(bufs: Buffer[]): void;
  has(cap: number): boolean;
}

const RECV_TIMES_MAX = 4096; // receive-time samples kept; older unacked writes share the oldest
// Rounds start at least this many of the last round's durations apart: when the disk is slow
// (a busy device, or a guest flushing after every write on the same disk), the hub's fdatasyncs
// take at most about a quarter of its time instead of running back to back ahead of the guest's.
const ROUND_SPACING = 4;
const SPACING_MAX_MS = 100; // ... but never further apart than this (the RPO lag it adds)
// While the guest flushes (a FLUSH marker in the last SPACING_MAX_MS), rounds start at least this
// many intervals apart (at most SPACING_MAX_MS, never closer than the interval). A guest flushing
// after each small write makes its disk's flushes the bottleneck, and each round adds two more
// (the recovery volume's and the journal's fdatasync) and about five thread wake-ups: at 5 ms
// that was a round per 1-2 guest writes. The agent's flush never waits for an ack, so spacing
// them costs only RPO lag (at most 95 ms more by default), which that guest's own flushes do not
// shorten either. 4 intervals -> 20 (the cap): the flush job 1.10x, 5 of 5 rounds
// (docs/BENCHMARKS.md, Round 7).
export const FLUSHING_SPACING = 20;
// WRITE_APPLIED at most this often: the bound it feeds is hundreds of ms wide, and a frame per
// write would be a second frame per 4 KiB write on both ends (SPEC.md 5.19).
export const APPLIED_GAP_MS = 5;

export class GroupCommit {
  private recvSeq = 0; // protected writes received
  private appliedSeq = 0; // ... applied to their recovery volumes (or recorded, failed over)
  private ackedSeq = 0; // ... flushed and acked
  private readonly touched = new Set<Flushable>(); // written since their last flush
  private flushRun: Promise<void> | null = null; // the group commit under way
  private commitTimer: NodeJS.Timeout | null = null; // the next group commit, one interval after the last
  private lastCommitAt = -Infinity;
  private lastRoundMs = 0; // how long the last round's flushes took
  private lastMarkerAt = -Infinity; // when the agent's last FLUSH marker was applied (the guest flushes)
  // Receive times of unacked writes, one entry per millisecond: the oldest gives the RPO lag.
  private recvTimes: { seq: number; t: number }[] = [];
  private closed = false;
  private appliedSent = 0; // the newest seq a WRITE_APPLIED (or WRITE_ACK) told the agent
  private appliedTimer: NodeJS.Timeout | null = null; // created once, re-armed with refresh()
  private appliedArmed = false;
  private readonly appliedDue = (): void => {
    this.appliedArmed = false;
    if (this.closed || this.appliedSeq <= this.appliedSent) return;
    this.appliedSent = this.appliedSeq;
    this.link.send([encodeWriteApplied(this.appliedSeq)]);
  };

  constructor(
    private readonly link: AckLink,
    private readonly intervalMs: number,
    private readonly onError: (e: Error) => void,
  ) {}

  get received(): number {
    return this.recvSeq;
  }

  get acked(): number {
    return this.ackedSeq;
  }

  /** A protected write arrived. */
  receive(): void {
    this.recvSeq++;
    const now = Date.now(),
      times = this.recvTimes,
      last = times[times.length - 1];
    if ((!last || last.t !== now) && times.length < RECV_TIMES_MAX) times.push({ seq: this.recvSeq, t: now });
  }

  /** The next received write was applied; `target` (if any) must be flushed before it is acked. */
  applied(target: Flushable | null): void {
    if (target) this.touched.add(target);
    this.appliedSeq++;
    assert(this.appliedSeq <= this.recvSeq, 'a write is applied only after it was received');
    if (!this.appliedArmed && this.link.has(Cap.APPLIED)) this.armApplied();
  }

  /** The next WRITE_APPLIED, one gap from now (no allocation after the first: refresh()). */
  private armApplied(): void {
    if (this.closed) return;
    this.appliedArmed = true;
    if (this.appliedTimer === null) {
      this.appliedTimer = setTimeout(this.appliedDue, APPLIED_GAP_MS);
      this.appliedTimer.unref();
    } else this.appliedTimer.refresh();
  }

  /** Age of the oldest write received but not yet durable on the recovery volume. */
  rpoLagMs(): number {
    if (this.recvSeq === this.ackedSeq || this.recvTimes.length === 0) return 0;
    return Date.now() - this.recvTimes[0].t;
  }

  /** Commit what was applied: now if the last round was an interval ago, else one interval after it. */
  kick(): void {
    if (this.flushRun || this.commitTimer || this.closed) return;
    if (this.appliedSeq === this.ackedSeq && this.touched.size === 0) return;
    const wait = this.lastCommitAt + this.spacingMs() - performance.now();
    if (wait > 0) {
      this.commitTimer = setTimeout(() => {
        this.commitTimer = null;
        this.kick();
      }, Math.ceil(wait));
      return;
    }
    const run = this.commitOnce().finally(() => {
      if (this.flushRun === run) this.flushRun = null;
      this.kick(); // writes that came in meanwhile: the next round, an interval later
    });
    this.flushRun = run;
    run.catch(this.onError);
  }

  /** The agent's FLUSH marker was applied (the guest flushed): rounds space out for a while, then commit. */
  guestFlushed(): void {
    this.lastMarkerAt = performance.now();
    this.kick();
  }

  /**
   * Between the starts of two rounds: the interval, FLUSHING_SPACING intervals while the guest
   * flushes, or more while flushes are slow (0: back to back).
   */
  private spacingMs(): number {
    if (this.intervalMs === 0) return 0;
    const flushing = performance.now() - this.lastMarkerAt < SPACING_MAX_MS;
    const spaced = Math.min(SPACING_MAX_MS, this.intervalMs * FLUSHING_SPACING);
    const base = flushing ? Math.max(this.intervalMs, spaced) : this.intervalMs;
    return Math.max(base, Math.min(SPACING_MAX_MS, this.lastRoundMs * ROUND_SPACING));
  }

  /** Flush and ack everything applied so far; waits for a group commit already under way. */
  async flushNow(): Promise<void> {
    while (this.flushRun) await this.flushRun.catch(() => undefined);
    this.flushRun = this.flushLoop();
    try {
      await this.flushRun;
    } finally {
      this.flushRun = null;
    }
  }

  /** The session ends: no more rounds. */
  close(): void {
    this.closed = true;
    if (this.commitTimer) clearTimeout(this.commitTimer);
    this.commitTimer = null;
    if (this.appliedTimer) clearTimeout(this.appliedTimer);
    this.appliedArmed = false;
  }

  private async flushLoop(): Promise<void> {
    while (!this.closed && (this.appliedSeq > this.ackedSeq || this.touched.size > 0)) await this.commitOnce();
  }

  /** One group commit round: flush the volumes written so far, then ack up to there. */
  private async commitOnce(): Promise<void> {
    this.lastCommitAt = performance.now();
    const seq = this.appliedSeq;
    const targets = [...this.touched];
    this.touched.clear();
    try {
      await Promise.all(targets.map((t) => t.flushRecovery()));
      this.lastRoundMs = performance.now() - this.lastCommitAt;
    } catch (e) {
      // No more rounds: the next one would find nothing to flush and ack the writes that failed.
      this.close();
      throw e;
    }
    if (seq > this.ackedSeq) {
      assert(seq <= this.appliedSeq && this.appliedSeq <= this.recvSeq, 'an ack never passes what was applied');
      this.ackedSeq = seq;
      this.trimRecvTimes(seq);
      if (this.link.has(Cap.WRITE_ACK)) this.link.send([encodeWriteAck(seq)]);
      if (seq > this.appliedSent) this.appliedSent = seq; // the ack says applied too
    }
  }

  /** Drop receive times of acked writes; the head then stands for the oldest unacked one. */
  private trimRecvTimes(acked: number): void {
    const times = this.recvTimes;
    let drop = 0;
    while (drop + 1 < times.length && times[drop + 1].seq <= acked + 1) drop++;
    if (drop) times.splice(0, drop);
    if (times.length && times[0].seq <= acked) {
      if (this.recvSeq === acked) times.length = 0;
      else times[0] = { seq: acked + 1, t: times[0].t }; // conservative: no later than its real receive time
    }
  }
}
