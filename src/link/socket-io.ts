// A LinkIo over a TCP or TLS socket: the writes of one event-loop turn leave in one writev
// (net-batch.ts), or, with a gather window (gather.ts, the agent's link), mirror frames of up to
// a millisecond leave together; and the owner hears when the peer stops reading what we send.
import type { Socket } from 'node:net';
import { writeBatchedThen } from '../net-batch';
import { GatherWindow, type GatherLimits } from './gather';
import type { LinkIo } from './link';

/** `onBlocked(true)` once the socket's buffer is full, `(false)` when it has drained. */
export function socketIo(sock: Socket, onBlocked?: (blocked: boolean) => void, gather?: GatherLimits): LinkIo {
  let blocked = false;
  const window = gather ? new GatherWindow(sock, gather) : null;
  return {
    write(bufs, done) {
      if (sock.destroyed) return done?.();
      const ok = window ? window.write(bufs, done) : writeBatchedThen(sock, bufs, done);
      if (!ok && onBlocked && !blocked) {
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
