// A LinkIo over a TCP or TLS socket: the writes of one event-loop turn leave in one writev
// (net-batch.ts), or, with `gather`, the writes of up to `gather.ms` (the agent's mirror), and
// the owner hears when the peer stops reading what we send.
import type { Socket } from 'node:net';
import { writeBatchedThen, writeAllThen } from '../net-batch';
import { assert } from '../assert';
import type { LinkIo } from './link';

/**
 * Frames held corked up to `ms` after the first, or until `bytes` wait (then out at the end of
 * the turn): one writev, and one wakeup of the peer, for many frames. Why: at queue depth 1
 * every guest write is its own event-loop turn, so per-turn batching sent each 4 KiB mirror
 * frame in its own writev, and on this VM each loopback send that wakes the hub costs more CPU
 * than the JS that made it (issue 17: `perf` of the agent at QD1, a third of its samples in the
 * wakeup's irq enable). The mirror is asynchronous: a frame a millisecond later costs the guest
 * nothing.
 */
export interface Gather {
  ms: number;
  bytes: number;
}

/** `onBlocked(true)` once the socket's buffer is full, `(false)` when it has drained. */
export function socketIo(sock: Socket, onBlocked?: (blocked: boolean) => void, gather?: Gather): LinkIo {
  let blocked = false;
  const send = gather
    ? gathering(sock, gather)
    : (bufs: Buffer[], done?: () => void) => writeBatchedThen(sock, bufs, done);
  return {
    write(bufs, done) {
      if (sock.destroyed) return done?.();
      if (!send(bufs, done) && onBlocked && !blocked) {
        blocked = true;
        onBlocked(true);
        sock.once('drain', () => {
          blocked = false;
          onBlocked(false);
        });
      }
    },
    queuedBytes: () => sock.writableLength,
    close: () => sock.end(() => sock.destroy()),
  };
}

/**
 * The gathering send: one timer per socket, re-armed with refresh() per batch (not allocated;
 * refresh() revives a timer that fired, not one cleared, so it is cleared only at close). A
 * batch released by size leaves it armed, to fire on nothing; the next batch re-arms it.
 */
function gathering(sock: Socket, g: Gather): (bufs: Buffer[], done?: () => void) => boolean {
  assert(g.ms > 0 && g.bytes > 0, 'a gather window has a positive time and size');
  let held = false;
  let timer: NodeJS.Timeout | null = null;
  const release = (): void => {
    if (!held) return;
    held = false;
    sock.uncork();
  };
  let soon = false; // a release at the end of this turn is scheduled
  const releaseSoon = (): void => {
    soon = false;
    release();
  };
  sock.once('close', () => {
    if (timer) clearTimeout(timer);
  });
  return (bufs, done) => {
    if (!held) {
      held = true;
      sock.cork();
      if (timer) timer.refresh();
      else timer = setTimeout(release, g.ms);
    }
    const ok = writeAllThen(sock, bufs, done);
    // Full: out at the end of this turn, as without a window (after the guest's NBD reply of
    // this turn, not before it), not inside the write that filled it.
    if (!soon && sock.writableLength >= g.bytes) {
      soon = true;
      setImmediate(releaseSoon);
    }
    return ok;
  };
}
