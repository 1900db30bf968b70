// NBD server (fixed newstyle, simple replies) in front of the protected volumes, so QEMU and
// any NBD client use them as nbd://HOST:PORT/NAME. This file owns the listener and the set of
// connections; connection.ts, handshake.ts and transmission.ts own the protocol phases.
// Requests on a connection run concurrently and each reply goes out as soon as its request
// is done (TCP_NODELAY, nothing held back).
import * as fs from 'node:fs';
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
  readonly stats: NbdStats = { connections: 0, requests: 0, errors: 0, inflight: 0 };

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
    /** READ replies' buffers (the hub's restore exports); without it each read allocates. */
    private readonly readPool?: BufferPool,
  ) {}

  /** Clients connected now. */
  get openConnections(): number {
    return this.conns.size;
  }

  listen(host: string, port: number): Promise<net.AddressInfo> {
    return this.listenOn({ port, host }) as Promise<net.AddressInfo>;
  }

  /**
   * A UNIX socket at `path` (QEMU: nbd+unix:///NAME?socket=PATH). A socket file already there
   * is replaced, as QEMU's own listeners do (a killed server leaves one); any other file there
   * is an error, never removed.
   */
  async listenUnix(path: string): Promise<string> {
    removeStaleSocket(path);
    await this.listenOn({ path });
    return path;
  }

  private listenOn(where: net.ListenOptions): Promise<net.AddressInfo | string | null> {
    this.server = net.createServer({ pauseOnConnect: !this.tls }, (s) => this.accept(s));
    return new Promise((res, rej) => {
      this.server!.once('error', rej);
      this.server!.listen(where, () => res(this.server!.address()));
    });
  }

  async close(): Promise<void> {
    for (const c of this.conns) c.destroy();
    await new Promise<void>((r) => (this.server ? this.server.close(() => r()) : r()));
  }

  private accept(raw: net.Socket): void {
    const id = this.nextConn++;
    // A UNIX socket's peer has no address: name the connection by its id alone.
    const peer = raw.remoteAddress === undefined ? 'unix' : `${raw.remoteAddress}:${raw.remotePort}`;
    const log = this.log.child({ nbdConn: id, peer });
    this.stats.connections++;
    const ctx = { registry: this.exports, tls: this.tls, pool: this.pool, readPool: this.readPool, stats: this.stats };
    const conn = new NbdConnection(raw, ctx, log);
    const sock = conn.socket;
    this.conns.add(sock);
    sock.on('close', () => this.conns.delete(sock));
    conn.start();
  }
}

function removeStaleSocket(path: string): void {
  let st: fs.Stats;
  try {
    st = fs.lstatSync(path);
  } catch {
    return;
  }
  if (!st.isSocket()) throw new Error(`${path} exists and is not a socket: not replacing it`);
  fs.unlinkSync(path);
}
