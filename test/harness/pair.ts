// The usual end-to-end setup: one protected image of random data and holes, a hub process with
// its recovery volume, an agent process serving the image, both converged.
import * as path from 'node:path';
import { tmpdir, makeImage } from './util';
import { HubProcess, v1Hub } from './hub-process';
import { AgentProcess, v1Agent } from './agent-process';

export interface ProtectedPair {
  dir: string;
  img: string; // the protected volume V1
  rep: string; // its recovery volume
  hub: HubProcess;
  agent: AgentProcess;
}

/** `hubArgs`: extra hub options (--journal-size, say). */
export async function startProtectedPair(sizeBytes: number, hubArgs: string[] = []): Promise<ProtectedPair> {
  const dir = tmpdir();
  const img = path.join(dir, 'V1.img'),
    rep = path.join(dir, 'V1R');
  makeImage(img, sizeBytes, 0.5);
  const hub = v1Hub(dir, rep, ...hubArgs);
  await hub.start();
  const agent = v1Agent(dir, img, hub.port);
  await agent.start();
  await hub.converged('V1', img, rep, 60_000);
  return { dir, img, rep, hub, agent };
}
