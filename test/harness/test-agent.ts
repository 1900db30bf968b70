// A small agent for hub tests: the real ReplicationAgent over plain image files, driven by
// direct write() calls instead of an NBD server. The fuzz campaign's good agent is one too.
import * as path from 'node:path';
import { ReplicationAgent } from '../../src/agent/agent';
import { DirtyLog } from '../../storage/dirty-log';
import { FileVolume } from '../../storage/volume';
import { silentLogger, Logger } from '../../src/log';

export interface TestAgentOpts {
  port: number;
  host?: string;
  vm?: string;
  images: Record<string, string>;
  stateDir?: string;
  caps?: number;
  maxQueueBytes?: number;
  log?: Logger;
  regionSize?: number;
}

export function startTestAgent(o: TestAgentOpts): ReplicationAgent {
  const volumes = Object.entries(o.images).map(([name, file]) => {
    const target = FileVolume.open(file);
    const rs = o.regionSize ?? 64 * 1024;
    const log = o.stateDir
      ? DirtyLog.open(path.join(o.stateDir, `${name}.dirty`), target.sizeBytes, rs)
      : DirtyLog.memory(target.sizeBytes, rs);
    return { name, target, log };
  });
  const agent = new ReplicationAgent({
    hubHost: o.host ?? '127.0.0.1',
    hubPort: o.port,
    vm: o.vm ?? 'vm1',
    volumes,
    log: o.log ?? silentLogger(),
    caps: o.caps,
    maxQueueBytes: o.maxQueueBytes,
    reconnectMaxMs: 200,
  });
  agent.start();
  return agent;
}
