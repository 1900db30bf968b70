// The hub process: composes the replicas, the state store, the sessions, the failover
// controller, the agent listener (listener.ts), the HTTP API (http-api.ts), the monitor and the
// NBD exports, and owns their lifecycle (start, sampling, orderly close).
import * as crypto from 'node:crypto';
import * as net from 'node:net';
import type { TlsFiles } from '../security';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { DIRECT_ALIGN } from '../../storage/volume';
import { BufferPool } from '../buffer-pool';
import { StateStore } from '../../storage/state';
import type { Logger } from '../log';
import { Replica, ReplicaSpec, TargetOpener, openFileTarget } from './replica';
import { AgentSession, SessionConfig, defaultSessionConfig } from './session';
import { FailoverController, FailoverError } from './failover';
import { NbdServer } from '../nbd/server';
import { ExportRegistry } from '../nbd/exports';
import { HubStatusSource, Monitor } from './monitor';
import { AgentListener } from './listener';
import { HttpApi } from './http-api';
import { VerifyRefused, VerifyScheduler } from './verify-scheduler';
import { HubJournals, JournalConfig, JournalRefused } from './journal';
import { journalRoutes } from './journal-api';
import { RestoreExports } from './restore-export';
import { registerJournalMetrics } from './journal-metrics';
import { EventBus, serveEvents } from './events';
import { existing, failoverStep, feedEvents, sessionEvent } from './hub-events';
import { STATUS_SCHEMA, capNames } from '../status-schema';
import { registerResyncMetrics } from './resync-metrics';
import { VolumeRefused, addVolume, removeVolume } from './volume-set';
import { mergeRoutes, volumeRoutes } from './volume-api';
import { historyRoutes } from './history-api';

const POOL_TRIM_SECS = 10; // idle pool buffers untouched this long go back to the allocator
const POOL_KEEP_IDLE = 16; // ... down to this many (the idle bound before bursts were kept)
const MAX_ENDING = 1024; // ended sessions still applying that a stop waits for (each holds at most its queue)

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
  /** Bearer token of the operator API's POSTs (default: a random one, see `adminToken`). */
  adminToken?: string;
  /** Online verify: scan rate in bytes/s (0: unlimited) and the periodic scrub interval (0: off). */
  verify?: { rateBytesPerSecond: number; everyMs: number };
  /** The per-VM journal of checkpoints (point-in-time recovery); off when absent. */
  journal?: JournalConfig;
  /** The rephub version, for /status and rephub_build_info (cli/version.ts). */
  version?: string;
  /** How long a stop waits for the failover operation under way (default 10 s; tests shorten it). */
  stopWaitMs?: number;
}

export class Hub implements HubStatusSource {
  readonly replicas = new Map<string, Replica>();
  readonly sessions = new Set<AgentSession>();
  /** Sessions whose connection ended, still applying what it delivered (AgentSession.detach). */
  private readonly ending = new Set<Promise<void>>();
  private readonly listener: AgentListener<AgentSession>;
  private readonly httpApi: HttpApi;
  private nextSession = 1;
  private readonly cfg: SessionConfig;
  // Join buffers for large frames (sync reads, 1 MiB writes), shared by all sessions, aligned
  // for O_DIRECT. Idle buffers up to a session's apply queue (64 MiB at most): a
  // queue that drained to half and refills reused 3 in 4 buffers at 16 idle, and each fresh 1 MiB
  // costs page faults and GC (hub CPU per ingested MiB -14 %, docs/BENCHMARKS.md Round 14).
  // Trimmed to POOL_KEEP_IDLE by what a whole POOL_TRIM_SECS never took.
  readonly pool = new BufferPool((1 << 20) + 1024, 64, DIRECT_ALIGN);
  readonly openTarget: TargetOpener;
  readonly exports = new ExportRegistry();
  private nbd?: NbdServer;
  private nbdAddr = { host: '127.0.0.1', port: 10810 };
  readonly failover: FailoverController;
  readonly monitor: Monitor;
  readonly verifier: VerifyScheduler;
  private sampler: NodeJS.Timeout;
  /** The operator API's token; random unless given, so an embedded hub is never open. */
  readonly adminToken: string;
  readonly journals?: HubJournals;
  private readonly restores?: RestoreExports; // restore over NBD: point-in-time exports of their own
  /** What changed, as it changes (GET /events). */
  readonly events = new EventBus();
  /** Payload bytes received by sessions that ended: with the live ones', rephub_received_bytes_total. */
  private endedSessionBytes = 0;

  constructor(private readonly opts: HubOptions) {
    this.cfg = { ...defaultSessionConfig, ...opts.session };
    const open = opts.openTarget ?? openFileTarget;
    this.openTarget = (p, size) => open(p, size, this.pool); // the pool lends write payloads: one owner
    if (opts.journal) this.journals = new HubJournals(opts.journal, this.replicas, opts.log.child({ part: 'journal' }));
    for (const spec of opts.volumes) {
      if (this.replicas.has(spec.name)) throw new Error(`volume ${spec.name} configured twice`);
      this.adopt(spec);
    }
    this.failover = new FailoverController({
      replicas: this.replicas,
      store: opts.store,
      openTarget: this.openTarget,
      layersDir: opts.layersDir ?? fs.mkdtempSync(path.join(os.tmpdir(), 'rephub-layers-')),
      exports: this.exports,
      nbdUri: (n) => `nbd://${this.nbdAddr.host}:${this.nbdAddr.port}/${n}`,
      log: opts.log,
      journals: this.journals,
      step: (name, volumes) => failoverStep(this.events, name, volumes),
    });
    void this.failover.restore().catch(() => undefined); // listen() reports a failure
    this.verifier = new VerifyScheduler(
      {
        replicas: () => this.replicas.values(),
        attached: (r) => {
          for (const s of this.sessions) {
            const sync = s.volumes.find((v) => v.replica === r);
            if (sync) return { engine: s.verifier, sync };
          }
          return null;
        },
      },
      opts.verify ?? { rateBytesPerSecond: 0, everyMs: 0 },
      opts.log.child({ part: 'verify' }),
    );
    feedEvents(this.events, { replicas: this.replicas.values(), journals: this.journals, verifier: this.verifier });
    this.monitor = new Monitor(this, opts.version ?? 'unknown');
    if (this.journals) registerJournalMetrics(this.monitor.registry, this.journals);
    registerResyncMetrics(this.monitor.registry, this.cfg.resyncRate?.bytesPerSecond ?? 0, this.sessions);
    this.listener = new AgentListener<AgentSession>(
      {
        open: (transport, identity) => this.newSession(transport, identity),
        end: (s) => void this.endSession(s),
        sessionCount: () => this.sessions.size,
      },
      { maxSessions: opts.maxSessions ?? 64, tls: opts.tls, pool: this.pool, log: opts.log },
    );
    this.adminToken = opts.adminToken || crypto.randomBytes(32).toString('hex');
    this.restores = this.journals && this.restoreExports(this.journals);
    this.httpApi = new HttpApi({
      status: () => this.status(),
      monitor: this.monitor,
      actions: this.failover,
      isRefusal: (e) =>
        e instanceof FailoverError ||
        e instanceof VerifyRefused ||
        e instanceof JournalRefused ||
        e instanceof VolumeRefused,
      adminToken: this.adminToken,
      log: opts.log,
      verify: (req) => this.verifier.start(req),
      more: mergeRoutes(
        volumeRoutes(this),
        historyRoutes(this.monitor.history),
        this.journals ? journalRoutes(this.journals, this.restores) : undefined,
      ),
      events: (res) => serveEvents(this.events, () => existing(this.replicas.values(), this.sessions), res),
    });
    this.sampler = this.startSampling();
  }

  /** Restore over NBD: exports of their own on this hub's NBD server (plaintext only). */
  private restoreExports(journals: HubJournals): RestoreExports {
    return new RestoreExports(journals, {
      exports: this.exports,
      nbdUri: (n) =>
        this.opts.nbdTls || !this.nbd
          ? null
          : `nbd://${this.nbdAddr.host}:${this.nbdAddr.port}/${encodeURIComponent(n)}`,
      log: this.opts.log.child({ part: 'restore' }),
    });
  }

  /** Each replica's counters and alarm, sampled every second; the pool trimmed now and then. */
  private startSampling(): NodeJS.Timeout {
    let ticks = 0;
    const t = setInterval(() => {
      for (const r of this.replicas.values()) r.sample();
      if (++ticks % POOL_TRIM_SECS === 0) this.pool.trim(POOL_KEEP_IDLE);
    }, 1000);
    t.unref();
    return t;
  }

  /** A new replica for `spec`, wired to the journal and the alarm (configured and added volumes alike). */
  adopt(spec: ReplicaSpec): Replica {
    const r = new Replica(spec, this.opts.store, this.opts.regionSize ?? 64 * 1024, this.opts.log);
    const journals = this.journals;
    if (journals) {
      r.targetFilter = journals.filterFor(r);
      r.onAlarm = (active, start) => {
        const vm = r.owner?.vm || r.record?.vm;
        if (active && vm) journals.lastClean(vm, r.name, start);
      };
    }
    this.replicas.set(spec.name, r);
    return r;
  }

  /** Volumes in the failover test and in the failover now (the volume operations refuse those). */
  failoverVolumes(): { test: string[]; failover: string[] } {
    const st = this.failover.status();
    return { test: st.failoverTest?.volumes ?? [], failover: st.failover?.volumes ?? [] };
  }

  /** Protect a new volume while running (config reload); offered at once to a connected agent. */
  addVolume(spec: ReplicaSpec): ReturnType<typeof addVolume> {
    return addVolume(this, spec);
  }

  /** Stop protecting `name` (operator, config reload); its recovery file is kept untouched. */
  removeVolume(name: string): ReturnType<typeof removeVolume> {
    return removeVolume(this, name);
  }

  /** NBD exports of the hub: failover-test views and, after failover, the recovery volumes. */
  async listenNbd(host: string, port: number): Promise<net.AddressInfo> {
    let nbdTls;
    if (this.opts.nbdTls) {
      const f = this.opts.tls;
      if (!f?.cert || !f.key) throw new Error('NBD TLS needs the hub certificate (--tls-cert and --tls-key)');
      nbdTls = {
        cert: fs.readFileSync(f.cert),
        key: fs.readFileSync(f.key),
        ca: f.ca ? fs.readFileSync(f.ca) : undefined,
        requestCert: !!f.ca,
      };
    }
    // reads reuse pooled buffers (nbdcopy's 256 KiB requests; 16 MiB idle at most): restore reads a whole volume
    const readPool = new BufferPool(256 << 10, 64);
    this.nbd = new NbdServer(this.exports, this.log.child({ part: 'nbd' }), nbdTls, undefined, readPool);
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
    const host = {
      replica: (n: string) => this.replicas.get(n),
      openTarget: this.openTarget,
      pool: this.pool,
      verifyPacer: this.verifier.pacer,
      onFlushMarker: (vm: string) => this.journals?.onFlushMarker(vm),
      onPointMarker: (vm: string) => this.journals?.onPointMarker(vm),
      onHello: (sn: AgentSession) => sessionEvent(this.events, 'create', sn),
    };
    const s = new AgentSession(id, host, t, this.cfg, this.log.child({ session: id }), identity);
    this.sessions.add(s);
    return s;
  }

  endSession(s: AgentSession): Promise<void> {
    if (this.sessions.delete(s)) {
      this.endedSessionBytes += s.bytesReceived;
      sessionEvent(this.events, 'destroy', s);
    }
    const done = s.detach();
    if (this.ending.size < MAX_ENDING) {
      this.ending.add(done);
      void done.finally(() => this.ending.delete(done)).catch(() => undefined);
    }
    return done;
  }

  /** Accept agents (TCP, or TLS with --tls-* / --psk-file). */
  async listen(host: string, port: number): Promise<net.AddressInfo> {
    await this.failover.ready; // a failover or test under way at the last stop is reopened first
    return this.listener.listen(host, port);
  }

  status() {
    return {
      schema: STATUS_SCHEMA,
      version: this.opts.version ?? 'unknown',
      ...this.failover.status(),
      volumes: [...this.replicas.values()].map((r) => ({
        ...r.status(),
        verify: this.verifier.report(r.name),
        verifyFound: this.verifier.findings(r.name),
      })),
      agents: [...this.sessions].map((s) => ({
        session: s.id,
        vm: s.vm,
        caps: capNames(s.caps),
        capsMask: s.caps,
        since: new Date(s.started).toISOString(),
        volumes: s.volumes.map((v) => v.replica.name),
        bytesReceived: s.bytesReceived,
        rpoLagMs: s.rpoLagMs(),
        resync: s.resyncStatus(),
      })),
      bandwidth: { maxResyncRateBytesPerSec: this.cfg.resyncRate?.bytesPerSecond ?? 0 },
      journals: this.journals?.status(),
    };
  }

  listenHttp(host: string, port: number): Promise<net.AddressInfo> {
    return this.httpApi.listen(host, port);
  }

  // ---- the monitor's HubStatusSource ----

  sessionsConnected(): number {
    return this.sessions.size;
  }

  receivedBytes(): number {
    let n = this.endedSessionBytes;
    for (const s of this.sessions) n += s.bytesReceived;
    return n;
  }

  heat(cells: number): Record<string, readonly number[]> {
    const out: Record<string, readonly number[]> = {};
    for (const r of this.replicas.values()) out[r.name] = r.bitmap ? r.bitmap.density(cells) : [];
    return out;
  }

  checkpoints(spanMs: number, max: number): Record<string, { id: number; t: number; kind: string; label?: string }[]> {
    return this.journals?.recent(spanMs, max) ?? {};
  }

  /**
   * Orderly stop: listeners, sessions, each replica's checkpoint, target and clean identity, the
   * journals, the store. Each step is logged; a failed step is logged with its cause and the stop
   * goes on. Resolves with the number of failed steps (the daemon exits non-zero on any).
   */
  async close(): Promise<number> {
    const log = this.log.child({ part: 'stop' });
    let failed = 0;
    const step = async (what: string, ctx: object, fn: () => unknown) => {
      try {
        await fn();
      } catch (e) {
        failed++;
        log.error({ ...ctx, cause: (e as Error).message }, `stop: ${what} failed`);
      }
    };
    this.listener.stopAccepting();
    this.events.close();
    this.monitor.close();
    this.verifier.close();
    clearInterval(this.sampler);
    this.httpApi.close();
    await step('finishing the failover operation under way', {}, () => this.failover.close(this.opts.stopWaitMs));
    await step('closing the restore exports', {}, () => this.restores?.close());
    await step('closing the NBD exports', {}, () => this.nbd?.close());
    const sessions = this.sessions.size;
    this.listener.dropAll();
    await step('closing agent sessions', {}, async () => {
      // every session's end is waited for, even when another's fails
      const ends = await Promise.allSettled([...this.sessions].map((s) => this.endSession(s)));
      for (const e of ends) if (e.status === 'rejected') throw e.reason;
    });
    if (this.ending.size)
      log.info({ sessions: this.ending.size }, 'stop: waiting for ended sessions to apply what they received');
    await step('applying what ended sessions received', {}, () => Promise.allSettled(this.ending));
    log.info({ sessions }, 'stop: agent sessions closed');
    for (const r of this.replicas.values()) {
      const ctx = { volume: r.name, path: r.spec.path };
      await step('saving the checkpoint', ctx, () => r.checkpoint());
      await step('closing the recovery volume', ctx, () => r.target?.close());
      await step('saving the clean identity', ctx, () => r.saveCleanIdentity());
    }
    log.info({ volumes: this.replicas.size, failed }, 'stop: checkpoints saved, recovery volumes closed');
    await step('closing the journals', {}, () => this.journals?.close());
    await step('closing the state store', {}, () => this.opts.store.close());
    log.info({ failed }, 'stop: state store closed');
    return failed;
  }
}
