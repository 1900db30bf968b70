// The usual end-to-end setup: one protected image of random data and holes, a hub process with
// its recovery volume, an agent process serving the image, both converged.
import * as path from 'node:path';
import { tmpdir, makeImage } from './util';
import { execFileSync } from 'node:child_process';
import { CLI, HubProcess, v1Hub } from './hub-process';
import { AgentProcess, v1Agent } from './agent-process';

export interface ProtectedPair {
  dir: string;
  img: string; // the protected volume V1
  rep: string; // its recovery volume
  hub: HubProcess;
  agent: AgentProcess;
}

/**
 * A hub and an agent protecting V1, converged. `hubArgs`: extra hub options (--journal-size,
 * say); `fill`: the share of the image's 64 KiB blocks that hold data.
 */
export async function startProtectedPair(
  sizeBytes: number,
  hubArgs: string[] = [],
  fill = 0.5,
): Promise<ProtectedPair> {
  const dir = tmpdir();
  const img = path.join(dir, 'V1.img'),
    rep = path.join(dir, 'V1R');
  makeImage(img, sizeBytes, fill);
  const hub = v1Hub(dir, rep, ...hubArgs);
  await hub.start();
  const agent = v1Agent(dir, img, hub.port);
  await agent.start();
  await hub.converged('V1', img, rep, 60_000);
  return { dir, img, rep, hub, agent };
}

/** Run the rephub CLI against the pair's hub (operator token included); its stdout. */
export function rephub(pair: ProtectedPair, ...args: string[]): string {
  return execFileSync(process.execPath, [CLI, ...args, '--hub', `http://${pair.hub.http}`], {
    encoding: 'utf8',
    timeout: 60_000,
    env: { ...process.env, REPHUB_ADMIN_TOKEN_FILE: pair.hub.adminTokenFile },
  });
}

/** The journal's checkpoints of VM vm1, as `rephub checkpoints --json` lists them. */
export function points(pair: ProtectedPair): any[] {
  const out = JSON.parse(rephub(pair, 'checkpoints', '--vm', 'vm1', '--json'));
  return out.length ? out[0].checkpoints : [];
}
