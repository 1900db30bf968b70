// The operator's view of a hub: Prometheus metrics, and a live dashboard fed over WebSocket
// (state, progress, RPO lag, throughput, a heat map of each volume's dirty bitmap, each VM's
// checkpoints on a timeline). The last hour of RPO lag, throughput and dirty bytes is sampled
// here into the history, which the page reads from GET /history (history-api.ts).
import * as http from 'node:http';
import { Registry } from 'prom-client';
import { registerMetrics } from './metrics';
import { scrapeWithProcess } from '../process-metrics';
import type { HubStatusSource } from './status-source';

export type { HubStatusSource, VolumeStatus } from './status-source';
import { WebSocketServer, WebSocket } from 'ws';
import { DASHBOARD_HTML } from './dashboard';
import { History } from './history';

const HEAT_CELLS = 256; // heat-map cells per volume
const PUSH_MS = 500;
const MAX_CLIENTS = 32;
const SAMPLE_MS = 1000; // the history's step
const TIMELINE_MS = 3600_000; // the timeline's span: the history's hour
const TIMELINE_POINTS = 500; // checkpoints per VM on the page, the newest

export class Monitor {
  readonly registry = new Registry();
  private wss?: WebSocketServer;
  private timer?: NodeJS.Timeout;
  private lastSent = '';
  readonly history = new History(SAMPLE_MS);
  private readonly sampler: NodeJS.Timeout;

  constructor(
    private readonly source: HubStatusSource,
    private readonly version = 'unknown',
  ) {
    registerMetrics(this.registry, source);
    this.sampler = setInterval(() => this.history.sample(Date.now(), this.source.status().volumes), SAMPLE_MS);
    this.sampler.unref();
  }

  metrics(): Promise<string> {
    return scrapeWithProcess(this.registry, this.version);
  }

  /** Everything the dashboard shows, heat maps included. */
  snapshot() {
    const st = this.source.status();
    const heat: Record<string, number[]> = {};
    for (const [name, cells] of Object.entries(this.source.heat(HEAT_CELLS))) {
      heat[name] = cells.map((d) => Math.round(d * 100)); // percent: the page draws 0..100
    }
    return {
      ...st,
      at: Date.now(),
      heat,
      timeline: this.source.checkpoints?.(TIMELINE_MS, TIMELINE_POINTS) ?? {},
    };
  }

  attach(server: http.Server): void {
    this.wss = new WebSocketServer({ noServer: true, maxPayload: 1024 });
    server.on('upgrade', (req, sock, head) => {
      if (req.url !== '/ws' || this.wss!.clients.size >= MAX_CLIENTS) {
        sock.destroy();
        return;
      }
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
    clearInterval(this.sampler);
    if (this.timer) clearInterval(this.timer);
    for (const c of this.wss?.clients ?? []) c.terminate();
    this.wss?.close();
  }
}
