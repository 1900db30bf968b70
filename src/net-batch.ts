// Coalesce the socket writes of one event-loop turn into one writev: cork on the first write
// of the turn, uncork in setImmediate (after this turn's IO callbacks). Nothing waits for a
// timer or for more data; replies leave at the end of the turn that produced them.
import type { Socket } from 'node:net';

const corked = new WeakSet<Socket>();

export function writeBatched(sock: Socket, ...bufs: Buffer[]): boolean {
  return writeBatchedThen(sock, bufs);
}

/** As writeBatched; `done` runs once the socket no longer needs the buffers (written or failed). */
export function writeBatchedThen(sock: Socket, bufs: Buffer[], done?: () => void): boolean {
  if (!corked.has(sock)) {
    corked.add(sock);
    sock.cork();
    setImmediate(() => {
      corked.delete(sock);
      sock.uncork();
    });
  }
  return writeAllThen(sock, bufs, done);
}

/** Write the buffers as they are (the caller corks); `done` as in writeBatchedThen. */
export function writeAllThen(sock: Socket, bufs: Buffer[], done?: () => void): boolean {
  let ok = true,
    last = bufs.length - 1;
  while (last >= 0 && bufs[last].length === 0) last--;
  for (let i = 0; i <= last; i++) {
    if (!bufs[i].length) continue;
    // write callbacks run in order, so the last buffer's means all of them are written
    ok = i === last && done ? sock.write(bufs[i], () => done()) : sock.write(bufs[i]);
  }
  if (last < 0 && done) setImmediate(done);
  return ok;
}
