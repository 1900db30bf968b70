// NBD server (fixed newstyle, simple replies) in front of the protected volumes, so QEMU and
// any NBD client use them as nbd://HOST:PORT/NAME. This file owns the listener and the set of
// connections; connection.ts, handshake.ts and transmission.ts own the protocol phases.
// Requests on a connection run concurrently and each reply goes out as soon as its request
// is done (TCP_NODELAY, nothing held back).
import * as net from 'node:net';
import { NbdConnection, NbdTlsOptions } from './connection';
import type { ExportRegistry } from './exports';
import type { NbdStats } from './transmission';
import type { BufferPool } from '../buffer-pool';
import type { Logger } from '../log';

export class NbdServer {
  private server?: net.Server;
  private readonly conns = new Set<net.Socket>();
  private nextConn = 1;
  readonly stats: NbdStats = { connections: 0, requests: 0, errors: 0 };

  /**
   * With `tls`, clients must upgrade with NBD_OPT_STARTTLS before anything else. Without it,
   * large write payloads are received straight into a buffer of their own, from `pool` when
   * given (the export may hold() it past its promise, a mirror still sending it, say).
   * Removing an export from `exports` closes the connections attached to it.
   */
  constructor(
    private readonly exports: ExportRegistry,
    private readonly log: Logger,
    private readonly tls?: NbdTlsOptions,
    private readonly pool?: BufferPool,
  ) {}

  listen(host: string, port: number): Promise<net.AddressInfo> {
    this.server = net.createServer({ pauseOnConnect: !this.tls }, (s) => this.accept(s));
    return new Promise((res, rej) => {
      this.server!.once('error', rej);
      this.server!.listen(port, host, () => res(this.server!.address() as net.AddressInfo));
    });
  }

  async close(): Promise<void> {
    for (const c of this.conns) c.destroy();
    await new Promise<void>((r) => (this.server ? this.server.close(() => r()) : r()));
  }

  private accept(raw: net.Socket): void {
    const id = this.nextConn++;
    const log = this.log.child({ nbdConn: id, peer: `${raw.remoteAddress}:${raw.remotePort}` });
    this.stats.connections++;
    const ctx = { registry: this.exports, tls: this.tls, pool: this.pool, stats: this.stats };
    const conn = new NbdConnection(raw, ctx, log);
    const sock = conn.socket;
    this.conns.add(sock);
    sock.on('close', () => this.conns.delete(sock));
    conn.start();
  }
}
