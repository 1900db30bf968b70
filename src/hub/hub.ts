// The hub process: listens for agents, owns the replicas and the state store, serves /status.
import * as net from 'node:net';
import * as tls from 'node:tls';
import { TlsFiles, enabled as tlsEnabled, serverOptions } from '../security';
import * as http from 'node:http';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { FrameDecoder, ProtocolError, Limits, dataOffset } from '../../protocol';
import { DIRECT_ALIGN } from '../../storage/volume';
import { BufferPool } from '../buffer-pool';
import { StateStore } from '../../storage/state';
import type { Logger } from '../log';
import { Replica, ReplicaSpec, TargetOpener, openFileTarget } from './replica';
import { AgentSession, SessionConfig, defaultSessionConfig } from './session';
import { FailoverController, FailoverError } from './failover';
import { NbdServer } from '../nbd/server';
import { ExportRegistry } from '../nbd/exports';
import { Monitor } from './monitor';
import { writeBatched } from '../net-batch';
import { readThrough } from '../net-read';

const POOLED_FRAME_MIN = 64 * 1024; // smaller joins are cheap heap allocations

export interface HubOptions {
  volumes: ReplicaSpec[];
  store: StateStore;
  log: Logger;
  regionSize?: number;
  session?: Partial<SessionConfig>;
  openTarget?: TargetOpener;
  maxSessions?: number;
  /** Where failover-test layers and failover maps live (default: a temp dir, tests only). */
  layersDir?: string;
  /** TLS (mutual certificates) or TLS-PSK on the agent link; plaintext when absent. */
  tls?: TlsFiles;
  /** Require TLS (NBD STARTTLS) on the hub's NBD exports, with the --tls-* certificates. */
  nbdTls?: boolean;
}

export class Hub {
  readonly replicas = new Map<string, Replica>();
  readonly sessions = new Set<AgentSession>();
  private server?: net.Server;
  private http?: http.Server;
  private nextSession = 1;
  private readonly cfg: SessionConfig;
  /** Join buffers for large frames (sync reads, 1 MiB writes), shared by all sessions; 16 MiB idle at most. */
  readonly pool = new BufferPool((1 << 20) + 1024, 16, DIRECT_ALIGN); // write data aligned for O_DIRECT
  readonly openTarget: TargetOpener;
  private readonly maxSessions: number;
  private readonly sockets = new Set<net.Socket>();
  readonly exports = new ExportRegistry();
  private nbd?: NbdServer;
  private nbdAddr = { host: '127.0.0.1', port: 10810 };
  readonly failover: FailoverController;
  readonly monitor: Monitor;
  private sampler: NodeJS.Timeout;

  constructor(private readonly opts: HubOptions) {
    this.cfg = { ...defaultSessionConfig, ...opts.session };
    this.openTarget = opts.openTarget ?? openFileTarget;
    this.maxSessions = opts.maxSessions ?? 64;
    for (const spec of opts.volumes) {
      if (this.replicas.has(spec.name)) throw new Error(`volume ${spec.name} configured twice`);
      this.replicas.set(spec.name, new Replica(spec, opts.store, opts.regionSize ?? 64 * 1024));
    }
    this.failover = new FailoverController({
      replicas: this.replicas, sessions: this.sessions, store: opts.store, openTarget: this.openTarget,
      layersDir: opts.layersDir ?? fs.mkdtempSync(path.join(os.tmpdir(), 'rephub-layers-')),
      exports: this.exports, nbdUri: (n) => `nbd://${this.nbdAddr.host}:${this.nbdAddr.port}/${n}`, log: opts.log,
    });
    this.failover.restore();
    this.monitor = new Monitor(this);
    this.sampler = setInterval(() => { for (const r of this.replicas.values()) r.sample(); }, 1000);
    this.sampler.unref();
  }

  /** NBD exports of the hub: failover-test views and, after failover, the recovery volumes. */
  async listenNbd(host: string, port: number): Promise<net.AddressInfo> {
    let nbdTls;
    if (this.opts.nbdTls) {
      const f = this.opts.tls;
      if (!f?.cert || !f.key) throw new Error('NBD TLS needs the hub certificate (--tls-cert and --tls-key)');
      nbdTls = { cert: fs.readFileSync(f.cert), key: fs.readFileSync(f.key), ca: f.ca ? fs.readFileSync(f.ca) : undefined, requestCert: !!f.ca };
    }
    this.nbd = new NbdServer(this.exports, this.log.child({ part: 'nbd' }), nbdTls);
    const a = await this.nbd.listen(host, port);
    this.nbdAddr = { host: a.address.includes(':') ? `[${a.address}]` : a.address, port: a.port };
    return a;
  }

  get log(): Logger {
    return this.opts.log;
  }

  /** The session API for a transport; the TCP listener and the simulations both use it. */
  newSession(t: ConstructorParameters<typeof AgentSession>[2], identity: string | null = null): AgentSession {
    const id = this.nextSession++;
    const s = new AgentSession(id, {
      replica: (n) => this.replicas.get(n),
      openTarget: this.openTarget,
      onStateChange: (r, from) => this.log.info({ volume: r.name, from, to: r.state, dirtyBytes: r.bitmap?.dirtyBytes ?? 0 }, 'volume state'),
      pool: this.pool,
    }, t, this.cfg, this.log.child({ session: id }), identity);
    this.sessions.add(s);
    return s;
  }

  endSession(s: AgentSession): Promise<void> {
    this.sessions.delete(s);
    return s.detach();
  }

  listen(host: string, port: number): Promise<net.AddressInfo> {
    if (this.opts.tls && tlsEnabled(this.opts.tls)) {
      const { options, identityOf } = serverOptions(this.opts.tls);
      const srv = tls.createServer(options, (sock) => {
        const id = identityOf(sock);
        if (!id) {
          this.log.warn({ peer: `${sock.remoteAddress}:${sock.remotePort}` }, 'agent refused: no authenticated identity');
          sock.destroy();
          return;
        }
        this.accept(sock, id);
      });
      srv.on('tlsClientError', (e, sock) => this.log.warn({ peer: `${sock.remoteAddress}:${sock.remotePort}`, cause: e.message },
        'agent refused: TLS handshake failed (plaintext, unknown certificate or wrong key)'));
      this.server = srv;
    } else this.server = net.createServer({ pauseOnConnect: true }, (sock) => this.accept(sock));
    return new Promise((res, rej) => {
      this.server!.once('error', rej);
      this.server!.listen(port, host, () => res(this.server!.address() as net.AddressInfo));
    });
  }

  private accept(sock: net.Socket, identity: string | null = null): void {
    const peer = `${sock.remoteAddress}:${sock.remotePort}`;
    if (this.sessions.size >= this.maxSessions) {
      this.log.warn({ peer, max: this.maxSessions }, 'too many agent sessions; connection refused');
      sock.destroy();
      return;
    }
    // Frames up to a pool buffer are received in place; larger ones (rare) are joined.
    let session: AgentSession | undefined;
    const framer = new FrameDecoder((cmd, payload) => session!.receive(cmd, payload), Limits.maxPayload,
      (n, cmd) => (n >= POOLED_FRAME_MIN ? this.pool.take(n, dataOffset(cmd)) : Buffer.allocUnsafe(n)), this.pool.bufferBytes);
    const failed = (e: unknown) => session!.fail(e instanceof ProtocolError ? e : new ProtocolError(String((e as Error).message)));
    const plain = !(sock instanceof tls.TLSSocket);
    if (plain) sock = readThrough(sock, framer, failed);
    sock.setNoDelay(true);
    sock.setKeepAlive(true, 10_000);
    this.sockets.add(sock);
    // Flow control both ways: stop reading when the session's apply queue is full, and when
    // the peer does not read what we send (so a peer that never reads cannot grow our memory).
    let inPaused = false, outPaused = false;
    const flow = () => (inPaused || outPaused ? sock.pause() : sock.resume());
    session = this.newSession({
      send: (bufs) => {
        if (sock.destroyed) return;
        if (!writeBatched(sock, ...bufs) && !outPaused) {
          outPaused = true;
          flow();
          sock.once('drain', () => { outPaused = false; flow(); });
        }
      },
      close: () => sock.end(() => sock.destroy()),
      pause: (p) => { inPaused = p; flow(); },
    }, identity);
    this.log.info({ session: session.id, peer, identity }, 'agent connected');
    const s = session;
    if (!plain) {
      sock.on('data', (chunk) => {
        try {
          framer.push(chunk);
        } catch (e) {
          failed(e);
        }
      });
    }
    sock.on('error', (e) => this.log.warn({ session: s.id, peer, cause: e.message }, 'agent socket error'));
    sock.on('close', () => {
      this.sockets.delete(sock);
      void this.endSession(s);
    });
    if (plain) sock.resume();
  }

  status() {
    return {
      ...this.failover.status(),
      volumes: [...this.replicas.values()].map((r) => r.status()),
      agents: [...this.sessions].map((s) => ({
        session: s.id, vm: s.vm, caps: s.caps, since: new Date(s.started).toISOString(),
        volumes: s.volumes.map((v) => v.replica.name), bytesReceived: s.bytesReceived,
      })),
    };
  }

  listenHttp(host: string, port: number): Promise<net.AddressInfo> {
    this.http = http.createServer((req, res) => {
      const json = (code: number, v: unknown) => {
        res.writeHead(code, { 'content-type': 'application/json' });
        res.end(JSON.stringify(v, null, 1));
      };
      if (req.method === 'GET' && (req.url === '/status' || req.url === '/status/')) return json(200, this.status());
      if (req.method === 'GET' && req.url === '/metrics') {
        this.monitor.metrics().then((m) => { res.writeHead(200, { 'content-type': this.monitor.registry.contentType }); res.end(m); },
          (e) => json(500, { error: e.message }));
        return;
      }
      if (req.method === 'GET' && (req.url === '/' || req.url === '/dashboard')) {
        res.writeHead(200, { 'content-type': 'text/html; charset=utf-8' });
        res.end(this.monitor.dashboard());
        return;
      }
      const actions: Record<string, (body: any) => Promise<unknown>> = {
        '/failover-test/start': (b) => this.failover.startTest({ vm: b.vm, force: !!b.force }),
        '/failover-test/stop': () => this.failover.stopTest(),
        '/failover': (b) => this.failover.failoverNow({ force: !!b.force }),
        '/failback': (b) => this.failover.failback({ winner: b.winner }),
      };
      const act = req.method === 'POST' ? actions[req.url ?? ''] : undefined;
      if (!act) return json(404, { error: 'not found: GET / (dashboard), /status, /metrics, /ws; POST /failover-test/start|stop, /failover, /failback' });
      let body = '';
      req.on('data', (c) => { body += c; if (body.length > 65536) req.destroy(); });
      req.on('end', () => {
        let parsed: any = {};
        try { parsed = body ? JSON.parse(body) : {}; } catch { return json(400, { error: 'body is not JSON' }); }
        act(parsed).then((r) => json(200, r), (e) => {
          this.log.error({ action: req.url, cause: e.message }, 'operator action refused');
          json(e instanceof FailoverError ? 409 : 500, { error: e.message });
        });
      });
    });
    this.monitor.attach(this.http);
    return new Promise((res, rej) => {
      this.http!.once('error', rej);
      this.http!.listen(port, host, () => res(this.http!.address() as net.AddressInfo));
    });
  }

  async close(): Promise<void> {
    this.server?.close();
    this.monitor.close();
    clearInterval(this.sampler);
    this.http?.close();
    await this.nbd?.close();
    for (const s of this.sockets) s.destroy();
    await Promise.all([...this.sessions].map((s) => this.endSession(s)));
    for (const r of this.replicas.values()) {
      await r.checkpoint().catch(() => undefined);
      await r.target?.close();
    }
    await this.opts.store.close();
  }
}
