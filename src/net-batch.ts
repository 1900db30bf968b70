// Coalesce the socket writes of one event-loop turn into one writev: cork on the first write
// of the turn, uncork in setImmediate (after this turn's IO callbacks). Nothing waits for a
// timer or for more data; replies leave at the end of the turn that produced them.
import type { Socket } from 'node:net';

const corked = new WeakSet<Socket>();

export function writeBatched(sock: Socket, ...bufs: Buffer[]): boolean {
  if (!corked.has(sock)) {
    corked.add(sock);
    sock.cork();
    setImmediate(() => {
      corked.delete(sock);
      sock.uncork();
    });
  }
  let ok = true;
  for (const b of bufs) if (b.length) ok = sock.write(b);
  return ok;
}
