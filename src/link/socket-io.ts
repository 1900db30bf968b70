// A LinkIo over a TCP or TLS socket: the writes of one event-loop turn leave in one writev
// (net-batch.ts), and the owner hears when the peer stops reading what we send.
import type { Socket } from 'node:net';
import { writeBatchedThen } from '../net-batch';
import type { LinkIo } from './link';

/** `onBlocked(true)` once the socket's buffer is full, `(false)` when it has drained. */
export function socketIo(sock: Socket, onBlocked?: (blocked: boolean) => void): LinkIo {
  let blocked = false;
  return {
    write(bufs, done) {
      if (sock.destroyed) return done?.();
      if (!writeBatchedThen(sock, bufs, done) && onBlocked && !blocked) {
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
