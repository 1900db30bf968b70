// The agent's HTTP endpoint (--http): GET /status (the versioned document of docs/STATUS.md)
// and GET /metrics (Prometheus: mirrored writes and bytes, what is in flight, dirty bytes per
// volume, the hub link, reconnects, process metrics, build info), both read from the agent's
// status at each request. It listens before the NBD exports, so it answers once they do.
// prom-client is loaded at the first scrape: it was 18 of the agent's 84 ms of module loading,
// and an agent started by rephub-qemu holds the VM's start until it serves.
import * as http from 'node:http';
import type { Registry } from 'prom-client';
import { parseListenAddr } from './listen-addr';
import { STATUS_SCHEMA, capNames } from '../status-schema';
import { VERSION } from './version';

/** What the agent's status gives that the metrics read (ReplicationAgent.status()). */
export interface AgentStatusFacts {
  vm: string;
  connected: boolean;
  caps: number;
  queueBytes: number;
  pendingWrites: number;
  writes: number;
  mirroredBytes: number;
  overflowWrites: number;
  remoteReadBytes: number;
  connects: number;
  lagBound: { heldWrites: number; queueHolds: number };
  volumes: readonly { name: string; state: string; sizeBytes: number; dirtyBytes: number }[];
}

/** The /status document: schema and version first, capabilities by name (the mask kept). */
export function statusDocument(st: AgentStatusFacts & Record<string, unknown>): Record<string, unknown> {
  return { schema: STATUS_SCHEMA, version: VERSION, ...st, caps: capNames(st.caps), capsMask: st.caps };
}

type Prom = typeof import('prom-client');

function registerAgentMetrics(prom: Prom, r: Registry, status: () => AgentStatusFacts): void {
  const { Counter, Gauge } = prom;
  const hub = (name: string, help: string, value: (s: AgentStatusFacts) => number, kind: 'gauge' | 'counter') =>
    kind === 'gauge'
      ? new Gauge({
          name,
          help,
          labelNames: ['vm'],
          registers: [r],
          collect() {
            const s = status();
            this.reset();
            this.set({ vm: s.vm }, value(s));
          },
        })
      : new Counter({
          name,
          help,
          labelNames: ['vm'],
          registers: [r],
          collect() {
            const s = status();
            this.reset();
            this.inc({ vm: s.vm }, value(s));
          },
        });
  const counters: [string, string, (s: AgentStatusFacts) => number][] = [
    ['rephub_agent_mirrored_writes_total', 'Guest writes mirrored to the hub', (s) => s.writes],
    ['rephub_agent_mirrored_bytes_total', 'Bytes of guest writes mirrored to the hub', (s) => s.mirroredBytes],
    [
      'rephub_agent_overflow_writes_total',
      'Writes that found the send queue full and became dirty regions',
      (s) => s.overflowWrites,
    ],
    [
      'rephub_agent_remote_read_bytes_total',
      'Bytes the hub read back for its sync (remote reads)',
      (s) => s.remoteReadBytes,
    ],
    ['rephub_agent_connects_total', 'Connections to a hub made (the first and every reconnect)', (s) => s.connects],
    [
      'rephub_agent_held_replies_total',
      'Write replies held: the hub behind by more than --max-lag, or half the send queue full',
      (s) => s.lagBound.heldWrites,
    ],
    [
      'rephub_agent_queue_holds_total',
      'Times write replies started waiting for the send queue alone (more than half of --max-queue)',
      (s) => s.lagBound.queueHolds,
    ],
  ];
  for (const [name, help, value] of counters) hub(name, help, value, 'counter');
  hub('rephub_agent_hub_connected', 'The link to the hub is up (1) or not (0)', (s) => Number(s.connected), 'gauge');
  hub(
    'rephub_agent_pending_writes',
    'Mirrored writes awaiting the hub durable ack (in flight)',
    (s) => s.pendingWrites,
    'gauge',
  );
  hub('rephub_agent_queue_bytes', 'Bytes queued towards the hub, not yet sent', (s) => s.queueBytes, 'gauge');
  registerVolumeMetrics(prom, r, status);
}

/** Per protected volume: dirty bytes, size, whether the hub protects it now. */
function registerVolumeMetrics(prom: Prom, r: Registry, status: () => AgentStatusFacts): void {
  const volume = (name: string, help: string, value: (v: AgentStatusFacts['volumes'][number]) => number) =>
    new prom.Gauge({
      name,
      help,
      labelNames: ['vm', 'volume'],
      registers: [r],
      collect() {
        const s = status();
        this.reset();
        for (const v of s.volumes) this.set({ vm: s.vm, volume: v.name }, value(v));
      },
    });
  volume('rephub_agent_volume_dirty_bytes', 'Bytes of regions the hub may not have yet', (v) => v.dirtyBytes);
  volume('rephub_agent_volume_size_bytes', 'Protected volume size', (v) => v.sizeBytes);
  volume('rephub_agent_volume_protected', 'The hub protects the volume on this link (1) or not (0)', (v) =>
    Number(v.state === 'protected'),
  );
}

/** GET /status and /metrics of the agent on `addr` (host:port, unix:path, or off). */
export async function serveAgentHttp(
  addr: string,
  status: () => AgentStatusFacts & Record<string, unknown>,
): Promise<http.Server | undefined> {
  if (addr === 'off') return undefined;
  const httpAddr = parseListenAddr(addr, '--http');
  let metrics: Promise<() => Promise<{ type: string; text: string }>> | null = null; // made at the first scrape
  const scraper = async () => {
    const [prom, { scrapeWithProcess }] = await Promise.all([import('prom-client'), import('../process-metrics')]);
    const registry = new prom.Registry();
    registerAgentMetrics(prom, registry, status);
    return async () => ({ type: registry.contentType, text: await scrapeWithProcess(registry, VERSION) });
  };
  const scrape = () => {
    if (metrics === null) {
      metrics = scraper();
      metrics.catch(() => (metrics = null)); // a failed load is tried again at the next scrape
    }
    return metrics.then((s) => s());
  };
  const web = http.createServer((req, res) => {
    if (req.method === 'GET' && req.url === '/status') {
      res.writeHead(200, { 'content-type': 'application/json' });
      res.end(JSON.stringify(statusDocument(status()), null, 1));
    } else if (req.method === 'GET' && req.url === '/metrics') {
      scrape().then(
        ({ type, text }) => res.writeHead(200, { 'content-type': type }).end(text),
        (e: Error) => res.writeHead(500, { 'content-type': 'text/plain' }).end(`${e.message}\n`),
      );
    } else {
      res.writeHead(404, { 'content-type': 'text/plain' });
      res.end('not found: try GET /status or /metrics\n');
    }
  });
  await new Promise<void>((res, rej) => {
    web.once('error', rej);
    if (httpAddr.kind === 'unix') web.listen(httpAddr.path, () => res());
    else web.listen(httpAddr.port, httpAddr.host, () => res());
  });
  return web;
}
