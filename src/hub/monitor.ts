// The operator's view of a hub: Prometheus metrics, and a live dashboard fed over WebSocket
// (state, progress, RPO lag, throughput, and a heat map of each volume's dirty bitmap).
import * as http from 'node:http';
import { Registry, Gauge, Counter } from 'prom-client';
import { WebSocketServer, WebSocket } from 'ws';
import { DASHBOARD_HTML } from './dashboard';

const HEAT_CELLS = 256; // heat-map cells per volume
const PUSH_MS = 500;
const MAX_CLIENTS = 32;

/** The fields of a volume's status that the metrics read (the hub's /status has more). */
export interface VolumeStatus {
  name: string;
  vm: string | null;
  state: string;
  sizeBytes: number;
  dirtyBytes: number;
  bytesApplied: number;
  writesApplied: number;
  syncBytes: number;
  errors: number;
  rpoLagMs: number | null;
  throughputBps: number;
  syncPass: number;
}

/** What the monitor watches; the hub provides it, and the monitor knows nothing else of the hub. */
export interface HubStatusSource {
  /** The /status document; its other fields pass through to the dashboard. */
  status(): { volumes: readonly VolumeStatus[] };
  sessionsConnected(): number;
  /** Payload bytes received from the agents connected now. */
  receivedBytes(): number;
  /** Each volume's dirty-bitmap density in `cells` cells, 0 to 1 ([] for a volume without a bitmap). */
  heat(cells: number): Record<string, readonly number[]>;
}

type VolumeValue<T> = (v: VolumeStatus) => T;

export class Monitor {
  readonly registry = new Registry();
  private wss?: WebSocketServer;
  private timer?: NodeJS.Timeout;
  private lastSent = '';

  constructor(private readonly source: HubStatusSource) {
    const vols = () => source.status().volumes;
    const r = this.registry;
    const gauge = (name: string, help: string, value: VolumeValue<number | null>) =>
      new Gauge({ name, help, labelNames: ['volume', 'vm'], registers: [r], collect() {
        this.reset();
        for (const v of vols()) { const x = value(v); if (x !== null) this.set({ volume: v.name, vm: v.vm ?? '' }, x); }
      } });
    const counter = (name: string, help: string, value: VolumeValue<number>) =>
      new Counter({ name, help, labelNames: ['volume', 'vm'], registers: [r], collect() {
        this.reset();
        for (const v of vols()) this.inc({ volume: v.name, vm: v.vm ?? '' }, value(v));
      } });
    counter('rephub_volume_applied_bytes_total', 'Bytes of mirrored protected writes applied to the recovery volume', (v) => v.bytesApplied);
    counter('rephub_volume_applied_writes_total', 'Mirrored protected writes applied', (v) => v.writesApplied);
    counter('rephub_volume_sync_bytes_total', 'Bytes copied by initial sync and resync (remote reads)', (v) => v.syncBytes);
    counter('rephub_volume_errors_total', 'Recovery volume write/flush failures and failed remote reads', (v) => v.errors);
    gauge('rephub_volume_dirty_bytes', 'Bytes of regions that may differ from the protected volume', (v) => v.dirtyBytes);
    gauge('rephub_volume_size_bytes', 'Volume size', (v) => v.sizeBytes);
    gauge('rephub_volume_rpo_lag_seconds', 'Age of the oldest write not yet durable on the hub (time out of sync when not protecting)', (v) => (v.rpoLagMs === null ? null : v.rpoLagMs / 1000));
    gauge('rephub_volume_throughput_bytes_per_second', 'Bytes applied per second, last sample', (v) => v.throughputBps);
    gauge('rephub_volume_sync_pass', 'Sync pass number', (v) => v.syncPass);
    new Gauge({ name: 'rephub_volume_state', help: 'Current state (1 for the state the volume is in)', labelNames: ['volume', 'state'], registers: [r], collect() {
      this.reset();
      for (const v of vols()) this.set({ volume: v.name, state: v.state }, 1);
    } });
    new Gauge({ name: 'rephub_agents_connected', help: 'Connected agent sessions', registers: [r], collect() {
      this.set(source.sessionsConnected());
    } });
    new Counter({ name: 'rephub_received_bytes_total', help: 'Payload bytes received from connected agents', registers: [r], collect() {
      this.reset();
      this.inc(source.receivedBytes());
    } });
  }

  metrics(): Promise<string> {
    return this.registry.metrics();
  }

  /** Everything the dashboard shows, heat maps included. */
  snapshot() {
    const st = this.source.status();
    const heat: Record<string, number[]> = {};
    for (const [name, cells] of Object.entries(this.source.heat(HEAT_CELLS))) {
      heat[name] = cells.map((d) => Math.round(d * 100)); // percent: the page draws 0..100
    }
    return { ...st, at: Date.now(), heat };
  }

  attach(server: http.Server): void {
    this.wss = new WebSocketServer({ noServer: true, maxPayload: 1024 });
    server.on('upgrade', (req, sock, head) => {
      if (req.url !== '/ws' || this.wss!.clients.size >= MAX_CLIENTS) { sock.destroy(); return; }
      this.wss!.handleUpgrade(req, sock, head, (ws) => {
        ws.send(JSON.stringify(this.snapshot()));
        ws.on('message', () => undefined); // the feed is one-way
      });
    });
    this.timer = setInterval(() => this.push(), PUSH_MS);
    this.timer.unref();
  }

  private push(): void {
    if (!this.wss || this.wss.clients.size === 0) return;
    const snap = this.snapshot();
    const key = JSON.stringify({ ...snap, at: 0 });
    if (key === this.lastSent) return; // only changes are pushed
    this.lastSent = key;
    const msg = JSON.stringify(snap);
    for (const c of this.wss.clients) if (c.readyState === WebSocket.OPEN && c.bufferedAmount < 1 << 20) c.send(msg);
  }

  dashboard(): string {
    return DASHBOARD_HTML;
  }

  close(): void {
    if (this.timer) clearInterval(this.timer);
    for (const c of this.wss?.clients ?? []) c.terminate();
    this.wss?.close();
  }
}
