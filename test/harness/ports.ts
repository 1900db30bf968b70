// Ephemeral loopback ports for the processes and proxies a test starts.
import * as net from 'node:net';

/** A port free on 127.0.0.1 right now (the kernel's pick; another process may still take it). */
export async function freePort(): Promise<number> {
  const s = net.createServer();
  await new Promise<void>((r) => s.listen(0, '127.0.0.1', r));
  const p = (s.address() as net.AddressInfo).port;
  await new Promise((r) => s.close(r));
  return p;
}
