// The agent's gather window on its link to the hub: which frames may wait for company, how long
// and how many bytes, and the one cork that holds them. Owns the window's state (held or not,
// its timer, a release at the end of the turn). Frames never change order: the window only
// decides when the kernel gets the bytes already queued on the socket, in the order written.
//
// Why: at queue depth 1 every guest write is its own event-loop turn, so per-turn batching
// (net-batch.ts) sent each 4 KiB mirror frame in its own writev and woke the hub once per write;
// on this VM each loopback send that wakes the peer costs more CPU than the JS that made it
// (issue 17: `perf` of the agent at QD1, a third of its samples in the wakeup's irq enable).
// The mirror is asynchronous: a PROTECTED_WRITE a millisecond later costs the guest nothing.
//
// Why only PROTECTED_WRITE: every other frame is something the hub (or the agent's own
// governor) waits on, and a window would add its whole length to each wait:
// - REMOTE_IO_RES and CHECKSUM_RES answer the hub's sync and verify, which keep a few reads in
//   flight; a sync reading one region at a time paid 1 ms per region (branch i5-lat: the
//   dashboard e2e's 128 MiB sync, 25 s -> 74 s);
// - DIRTY_REPORT: the hub persists and acks it, and until then the agent may clear nothing of it
//   (SPEC 9), and a volume does not converge before its DIRTY_FINAL;
// - FLUSH asks the hub to make the writes before it durable at its next group commit:
//   held, it would hold them too;
// - PING and PONG measure the round trip (the dead-peer rule, the resync governor's delay
//   probe); HELLO, IDENTITY, REPORT_VM_VOLUMES, VOLUME_SIZE, AGENT_SHUTDOWN, ERROR are rare
//   steps of a session that the hub answers.
// Such a frame releases the window at the end of its turn, with every PROTECTED_WRITE held
// before it (they precede it on the wire), as per-turn batching would send it.
import type { Socket } from 'node:net';
import { Cmd } from '../../protocol';
import { assert } from '../assert';
import { writeAllThen } from '../net-batch';

/** The window's bounds: a held frame leaves at most `ms` after the first of its batch, and the
 * batch leaves at the end of the turn in which `bytes` wait on the socket. */
export interface GatherLimits {
  ms: number;
  bytes: number;
}

/** The agent's mirror: 5 ms, 128 KiB (32 4 KiB frames; a 1 MiB write fills it at once and
 * leaves at the end of its turn, as without a window). 5 ms is the FLUSH marker gap and the
 * hub's commit interval: a guest that flushes after every write (a database at QD1) then wakes
 * the hub about once per marker, not once per write or two. Issue 17's flush job, against 1 ms
 * (BENCHMARKS Round 21): the hub's wakeups per write 0.47 -> 0.17, CPU per MiB lower in 9 of 10
 * rounds (IOPS ahead in 7 of 10, not settled); 10 and 20 ms gained nothing more. The mirror
 * lags the guest by at most 5 ms more, against --max-lag 500. */
export const MIRROR_GATHER: GatherLimits = { ms: 5, bytes: 128 << 10 };

const MAX_GATHER_MS = 1000; // a window is a small latency trade, never a queue
const MAX_GATHER_BYTES = 4 << 20;

/** Whether a frame (its buffers, header first, as Link sends them) may wait in the window. */
export function mayWait(bufs: Buffer[]): boolean {
  const head = bufs[0];
  return head !== undefined && head.length >= 6 && head.readUInt16LE(4) === Cmd.PROTECTED_WRITE;
}

/**
 * One socket's window. The timer is allocated once and re-armed with refresh() when a batch
 * starts (refresh() also revives a timer that fired), so a frame never waits longer than `ms`
 * after the first of its batch; a batch released early leaves it armed, to fire on nothing.
 */
export class GatherWindow {
  private held = false; // the socket is corked by us
  private soon = false; // a release at the end of this turn is scheduled
  private timer: NodeJS.Timeout | null = null;
  private readonly release = (): void => {
    if (!this.held) return;
    this.held = false;
    this.sock.uncork();
  };
  private readonly releaseSoon = (): void => {
    this.soon = false;
    this.release();
  };

  constructor(
    private readonly sock: Socket,
    private readonly limits: GatherLimits,
  ) {
    assert(limits.ms > 0 && limits.ms <= MAX_GATHER_MS, 'a gather window lasts 0-1000 ms');
    assert(limits.bytes > 0 && limits.bytes <= MAX_GATHER_BYTES, 'a gather window holds 0-4 MiB');
    sock.once('close', () => {
      if (this.timer) clearTimeout(this.timer);
    });
  }

  /** One frame onto the socket; false when the socket's buffer is over its high-water mark. */
  write(bufs: Buffer[], done?: () => void): boolean {
    if (!this.held) {
      this.held = true;
      this.sock.cork();
      if (this.timer) this.timer.refresh();
      else this.timer = setTimeout(this.release, this.limits.ms);
    }
    const ok = writeAllThen(this.sock, bufs, done);
    // Out at the end of this turn (after the guest's NBD reply of this turn, not inside the
    // call that sent the frame), as without a window.
    if (!this.soon && (!mayWait(bufs) || this.sock.writableLength >= this.limits.bytes)) {
      this.soon = true;
      setImmediate(this.releaseSoon);
    }
    return ok;
  }

  /** Whether frames are held now (tests, assertions). */
  get holding(): boolean {
    return this.held;
  }
}
