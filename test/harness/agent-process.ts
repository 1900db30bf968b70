// The agent as a real process (the CLI): an NBD server for real clients, mirroring to a hub.
import { spawn, ChildProcess } from 'node:child_process';
import * as net from 'node:net';
import * as path from 'node:path';
import { freePort } from './ports';
import { waitFor } from './util';
import { endProcess } from './child';
import { HEAP_FLAGS } from '../../src/cli/heap-flags';

export const AGENT_CLI = path.join(__dirname, '../../src/cli/rephub-agent.js');

export class AgentProcess {
  proc?: ChildProcess;
  nbdPort = 0;
  httpPort = 0;
  stderr = '';
  constructor(readonly args: string[]) {}

  async status(): Promise<any> {
    return (await fetch(`http://127.0.0.1:${this.httpPort}/status`)).json();
  }

  /** Every mirrored write acked and every dirty region handed over. */
  async clean(): Promise<boolean> {
    const st = await this.status();
    return st.connected && st.pendingWrites === 0 && st.volumes.every((v: any) => v.dirtyBytes === 0);
  }

  uri(name: string): string {
    return `nbd://127.0.0.1:${this.nbdPort}/${name}`;
  }

  async start(): Promise<void> {
    const picked = !this.nbdPort && !this.httpPort;
    for (let attempt = 1; ; attempt++) {
      try {
        return await this.startOnce();
      } catch (e) {
        // As the hub's (hub-process.ts): a port the kernel gave as free can be taken (an outgoing
        // connection's) before the agent binds it: exit code 3, an address in use (CI saw it in
        // network-faults.e2e). Ports this start picked are picked again.
        if (!picked || attempt >= 3 || this.proc?.exitCode !== 3) throw e;
        this.nbdPort = this.httpPort = 0;
      }
    }
  }

  private async startOnce(): Promise<void> {
    if (!this.nbdPort) this.nbdPort = await freePort();
    if (!this.httpPort) this.httpPort = await freePort();
    this.stderr = '';
    const args = [
      AGENT_CLI,
      '--nbd',
      `127.0.0.1:${this.nbdPort}`,
      '--http',
      `127.0.0.1:${this.httpPort}`,
      ...this.args,
    ];
    this.proc = spawn(process.execPath, [...HEAP_FLAGS, ...args], { stdio: ['ignore', 'ignore', 'pipe'] });
    this.proc.stderr!.on('data', (d) => {
      this.stderr = (this.stderr + d).slice(-20000);
    });
    const p = this.proc;
    try {
      await waitFor(
        'agent NBD listening',
        () => {
          if (p.exitCode !== null || p.signalCode !== null)
            throw new Error(`agent exited (${p.exitCode ?? p.signalCode})`);
          return new Promise<boolean>((r) => {
            const s = net.connect(this.nbdPort, '127.0.0.1', () => {
              s.destroy();
              r(true);
            });
            s.on('error', () => r(false));
          });
        },
        15000,
        50,
      );
    } catch (e) {
      // a start that fails says why: the agent's own last words (a port taken, a bad image, ...)
      throw new Error(
        `${(e as Error).message}; NBD port ${this.nbdPort}; agent stderr: ${this.stderr.slice(-2000) || '(none)'}`,
        { cause: e },
      );
    }
  }

  kill9(): Promise<void> {
    return endProcess(this.proc, 'SIGKILL');
  }

  stop(): Promise<void> {
    return endProcess(this.proc, 'SIGTERM');
  }
}

/** An agent of VM vm1 exporting `img` as V1 to the hub at `hubPort`, its dirty logs under dir/agent. */
export function v1Agent(dir: string, img: string, hubPort: number, ...extra: string[]): AgentProcess {
  const args = [
    '--hub',
    `127.0.0.1:${hubPort}`,
    '--export',
    `V1=${img}`,
    '--state',
    path.join(dir, 'agent'),
    '--vm',
    'vm1',
  ];
  return new AgentProcess([...args, ...extra]);
}
