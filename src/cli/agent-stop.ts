// The agent daemon's signals: SIGINT/SIGTERM (and the parent watch) stop it in logged steps (NBD
// closed, the mirror drained within DRAIN_MS, each dirty log and image closed) with a last line
// and an exit code that says whether everything was handed over; SIGHUP reads --config again
// (agent-settings.ts) and never ends the agent.
import type * as http from 'node:http';
import type { Command } from 'commander';
import type { ReplicationAgent } from '../agent/agent';
import type { NbdServer } from '../nbd/server';
import type { DirtyLog } from '../../storage/dirty-log';
import type { BlockTarget } from '../../storage/volume';
import { fingerprintOf } from '../../storage/volume-identity';
import type { Logger } from '../log';
import { reloadAgentConfig } from './agent-settings';
import { EXIT_OK, EXIT_RUNTIME } from './exit-codes';

/** How long a stop waits for the hub to ack what was mirrored (systemd's TimeoutStopSec must exceed it). */
export const DRAIN_MS = 5000;

export interface AgentParts {
  nbd: NbdServer;
  web: http.Server | undefined;
  agent: ReplicationAgent;
  volumes: { name: string; image: string; log: DirtyLog; target: BlockTarget }[];
  log: Logger;
  cmd: Command;
  config: string | undefined;
  /** Called first on a stop (the parent watch closes). */
  closing(): void;
}

/** Installs the handlers; returns the stop, for the parent watch. */
export function agentSignals(p: AgentParts): (why: string) => Promise<void> {
  const { log } = p;
  let stopping = false;
  const stop = async (why: string) => {
    if (stopping) return;
    stopping = true;
    p.closing();
    log.info({ signal: why }, 'stopping: draining mirror, sending AGENT_SHUTDOWN');
    await p.nbd.close();
    p.web?.close();
    const { drained, pendingWrites } = await p.agent.stop(DRAIN_MS);
    if (!drained)
      log.error(
        { timeoutMs: DRAIN_MS, pendingWrites },
        'stop: the drain timed out with writes the hub has not acked; the dirty log keeps them for the next run',
      );
    let failed = drained ? 0 : 1;
    for (const v of p.volumes) {
      try {
        v.log.close(() => fingerprintOf(v.image)); // the image is synced: its fingerprint is exact now
        await v.target.close();
      } catch (e) {
        failed++;
        log.error({ volume: v.name, cause: (e as Error).message }, 'stop: closing the volume failed');
      }
    }
    const code = failed ? EXIT_RUNTIME : EXIT_OK;
    (failed ? log.error.bind(log) : log.info.bind(log))({ exitCode: code }, 'rephub-agent stopped');
    process.exit(code);
  };
  process.on('SIGINT', () => void stop('SIGINT'));
  process.on('SIGTERM', () => void stop('SIGTERM'));
  process.on('SIGHUP', () => {
    log.info({ signal: 'SIGHUP', config: p.config }, 'SIGHUP: reloading the config file');
    try {
      reloadAgentConfig(p.cmd, log);
    } catch (e) {
      log.error({ cause: (e as Error).message }, 'config reload failed; nothing changed');
    }
  });
  return stop;
}
