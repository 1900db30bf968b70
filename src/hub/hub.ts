// The hub process: listens for agents, owns the replicas and the state store, serves /status.
import * as net from 'node:net';
import * as http from 'node:http';
import { FrameDecoder, ProtocolError } from '../../protocol';
import { StateStore } from '../../storage/state';
import type { Logger } from '../log';
import { Replica, ReplicaSpec, TargetOpener, openFileTarget } from './replica';
import { AgentSession, SessionConfig, defaultSessionConfig } from './session';

export interface HubOptions {
  volumes: ReplicaSpec[];
  store: StateStore;
  log: Logger;
  regionSize?: number;
  session?: Partial<SessionConfig>;
  openTarget?: TargetOpener;
  maxSessions?: number;
}

export class Hub {
  readonly replicas = new Map<string, Replica>();
  readonly sessions = new Set<AgentSession>();
  private server?: net.Server;
  private http?: http.Server;
  private nextSession = 1;
  private readonly cfg: SessionConfig;
  readonly openTarget: TargetOpener;
  private readonly maxSessions: number;
  private readonly sockets = new Set<net.Socket>();

  constructor(private readonly opts: HubOptions) {
    this.cfg = { ...defaultSessionConfig, ...opts.session };
    this.openTarget = opts.openTarget ?? openFileTarget;
    this.maxSessions = opts.maxSessions ?? 64;
    for (const spec of opts.volumes) {
      if (this.replicas.has(spec.name)) throw new Error(`volume ${spec.name} configured twice`);
      this.replicas.set(spec.name, new Replica(spec, opts.store, opts.regionSize ?? 64 * 1024));
    }
  }

  get log(): Logger {
    return this.opts.log;
  }

  /** The session API for a transport; the TCP listener and the simulations both use it. */
  newSession(t: ConstructorParameters<typeof AgentSession>[2]): AgentSession {
    const id = this.nextSession++;
    const s = new AgentSession(id, {
      replica: (n) => this.replicas.get(n),
      openTarget: this.openTarget,
      onStateChange: (r, from) => this.log.info({ volume: r.name, from, to: r.state, dirtyBytes: r.bitmap?.dirtyBytes ?? 0 }, 'volume state'),
    }, t, this.cfg, this.log.child({ session: id }));
    this.sessions.add(s);
    return s;
  }

  endSession(s: AgentSession): Promise<void> {
    this.sessions.delete(s);
    return s.detach();
  }

  listen(host: string, port: number): Promise<net.AddressInfo> {
    this.server = net.createServer((sock) => this.accept(sock));
    return new Promise((res, rej) => {
      this.server!.once('error', rej);
      this.server!.listen(port, host, () => res(this.server!.address() as net.AddressInfo));
    });
  }

  private accept(sock: net.Socket): void {
    const peer = `${sock.remoteAddress}:${sock.remotePort}`;
    if (this.sessions.size >= this.maxSessions) {
      this.log.warn({ peer, max: this.maxSessions }, 'too many agent sessions; connection refused');
      sock.destroy();
      return;
    }
    sock.setNoDelay(true);
    sock.setKeepAlive(true, 10_000);
    this.sockets.add(sock);
    const session = this.newSession({
      send: (bufs) => {
        if (sock.destroyed) return;
        if (bufs.length === 1) sock.write(bufs[0]);
        else {
          sock.cork();
          for (const b of bufs) if (b.length) sock.write(b);
          sock.uncork();
        }
      },
      close: () => sock.end(() => sock.destroy()),
      pause: (p) => (p ? sock.pause() : sock.resume()),
    });
    this.log.info({ session: session.id, peer }, 'agent connected');
    const framer = new FrameDecoder((cmd, payload) => session.receive(cmd, payload));
    sock.on('data', (chunk) => {
      try {
        framer.push(chunk);
      } catch (e) {
        session.fail(e instanceof ProtocolError ? e : new ProtocolError(String((e as Error).message)));
      }
    });
    sock.on('error', (e) => this.log.warn({ session: session.id, peer, cause: e.message }, 'agent socket error'));
    sock.on('close', () => {
      this.sockets.delete(sock);
      void this.endSession(session);
    });
  }

  status() {
    return {
      volumes: [...this.replicas.values()].map((r) => r.status()),
      agents: [...this.sessions].map((s) => ({
        session: s.id, vm: s.vm, caps: s.caps, since: new Date(s.started).toISOString(),
        volumes: s.volumes.map((v) => v.replica.name), bytesReceived: s.bytesReceived,
      })),
    };
  }

  listenHttp(host: string, port: number): Promise<net.AddressInfo> {
    this.http = http.createServer((req, res) => {
      if (req.method === 'GET' && (req.url === '/status' || req.url === '/status/')) {
        const body = JSON.stringify(this.status(), null, 1);
        res.writeHead(200, { 'content-type': 'application/json' });
        res.end(body);
        return;
      }
      res.writeHead(404, { 'content-type': 'text/plain' });
      res.end('not found: try GET /status\n');
    });
    return new Promise((res, rej) => {
      this.http!.once('error', rej);
      this.http!.listen(port, host, () => res(this.http!.address() as net.AddressInfo));
    });
  }

  async close(): Promise<void> {
    this.server?.close();
    this.http?.close();
    for (const s of this.sockets) s.destroy();
    await Promise.all([...this.sessions].map((s) => this.endSession(s)));
    for (const r of this.replicas.values()) {
      await r.checkpoint().catch(() => undefined);
      await r.target?.close();
    }
    await this.opts.store.close();
  }
}
