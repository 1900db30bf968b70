// What rephub-qemu tells the operator about the hub in the VM's first seconds, as one warning
// line on its stderr, never a reason to stop the VM: a hub it cannot reach (one TCP connect),
// or a hub that is reachable but refuses the agent (wrong PSK or certificate, VOLUME_REFUSED:
// no such --vol, or another live agent holds it), which otherwise shows only in the agent's log.
// The refusal is read from the agent's GET /status on its private --http UNIX socket.
import * as http from 'node:http';
import * as net from 'node:net';
import type { QemuPlan } from '../qemu/plan';

const HUB_PROBE_MS = 3000;
/** How long after the agent is ready a refusal still gets its warning line. */
const REFUSAL_WATCH_MS = 10_000;
const STATUS_POLL_MS = 250;
const STATUS_TIMEOUT_MS = 2000;
/** The most of a /status answer read (it lists the VM's volumes: a few KiB). */
const MAX_STATUS_BYTES = 1 << 20;

const dirty = (vm: string) => `VM ${vm} boots anyway, its writes are kept as dirty regions until the hub takes them`;

/** One TCP connect: resolves with a warning, or undefined when the hub answers. */
export function probeHub(plan: QemuPlan): Promise<string | undefined> {
  const { host, port } = plan.repagent;
  const warning = (why: string) => `warning: hub ${host}:${port} unreachable (${why}); ${dirty(plan.vm)}`;
  return new Promise((resolve) => {
    const s = net.connect({ host, port, timeout: HUB_PROBE_MS });
    s.on('connect', () => (s.destroy(), resolve(undefined)));
    s.on('timeout', () => (s.destroy(), resolve(warning(`no answer in ${HUB_PROBE_MS / 1000} s`))));
    s.on('error', (e: NodeJS.ErrnoException) => resolve(warning(e.code ?? e.message)));
    s.unref();
  });
}

interface AgentStatus {
  refusal?: { code?: number; cause: string } | null;
  volumes?: { name: string; volumeId: number | null }[];
}

function agentStatus(socketPath: string): Promise<AgentStatus | undefined> {
  return new Promise((resolve) => {
    const req = http.get({ socketPath, path: '/status', timeout: STATUS_TIMEOUT_MS }, (res) => {
      let text = '';
      res.setEncoding('utf8');
      res.on('data', (d: string) => {
        text += d;
        if (text.length > MAX_STATUS_BYTES) req.destroy();
      });
      res.on('end', () => {
        try {
          resolve(JSON.parse(text) as AgentStatus);
        } catch {
          resolve(undefined);
        }
      });
      res.on('error', () => resolve(undefined));
    });
    req.on('timeout', () => req.destroy());
    req.on('error', () => resolve(undefined));
  });
}

/**
 * Polls the agent's status until every volume is protected, the hub refused it, `done()` says
 * QEMU is gone, or the watch's time is up. Resolves with the warning line for a refusal.
 */
export async function watchRefusal(
  plan: QemuPlan,
  socketPath: string,
  done: () => boolean,
): Promise<string | undefined> {
  const until = Date.now() + REFUSAL_WATCH_MS;
  const { host, port } = plan.repagent;
  while (Date.now() < until && !done()) {
    const st = await agentStatus(socketPath);
    if (st?.refusal) {
      const cause = st.refusal.cause.replace(/\s+/g, ' ').trim(); // one line, whatever the hub said
      return `warning: hub ${host}:${port} refused the agent: ${cause}; ${dirty(plan.vm)}`;
    }
    const vols = st?.volumes ?? [];
    if (vols.length > 0 && vols.every((v) => v.volumeId !== null && v.volumeId >= 0)) return undefined;
    await new Promise((r) => setTimeout(r, STATUS_POLL_MS).unref());
  }
  return undefined;
}
