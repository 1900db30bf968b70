// The hub as a real process (the CLI), so tests can kill -9 it.
import { spawn, ChildProcess } from 'node:child_process';
import * as path from 'node:path';
import { freePort } from './proxy';
import { waitFor, sha } from './util';

export const CLI = path.join(__dirname, '../../src/cli/rephub.js');

export class HubProcess {
  proc?: ChildProcess;
  port = 0;
  httpPort = 0;
  nbdPort = 0;
  stderr = '';
  constructor(readonly args: string[]) {}
  async post(action: string, body: object = {}): Promise<{ status: number; body: any }> {
    const r = await fetch(`http://127.0.0.1:${this.httpPort}${action}`, { method: 'POST', body: JSON.stringify(body) });
    return { status: r.status, body: await r.json() };
  }
  async start(): Promise<void> {
    if (!this.port) this.port = await freePort();
    if (!this.httpPort) this.httpPort = await freePort();
    if (!this.nbdPort) this.nbdPort = await freePort();
    this.stderr = '';
    this.proc = spawn(process.execPath, [CLI, '--listen', `127.0.0.1:${this.port}`, '--http', `127.0.0.1:${this.httpPort}`, '--nbd', `127.0.0.1:${this.nbdPort}`, ...this.args], { stdio: ['ignore', 'ignore', 'pipe'] });
    this.proc.stderr!.on('data', (d) => { this.stderr = (this.stderr + d).slice(-20000); });
    await waitFor('hub listening', () => this.status().then(() => true), 15000, 50);
  }
  async status(): Promise<any> {
    const r = await fetch(`http://127.0.0.1:${this.httpPort}/status`);
    return r.json();
  }
  /** The volume protecting with nothing dirty, and its replica byte-equal to the image. */
  async converged(name: string, img: string, rep: string, timeoutMs = 60_000): Promise<void> {
    await waitFor(`${name} protecting and clean`, async () => { const v = await this.volume(name); return v.state === 'protecting' && v.dirtyBytes === 0; }, timeoutMs, 50);
    await waitFor(`${name} byte-equal`, () => sha(img) === sha(rep), 30_000, 100);
  }

  async volume(name: string): Promise<any> {
    return (await this.status()).volumes.find((v: any) => v.name === name);
  }
  kill9(): Promise<void> {
    const p = this.proc!;
    return new Promise((r) => { p.once('exit', () => r()); p.kill('SIGKILL'); });
  }
  stop(): Promise<void> {
    const p = this.proc;
    if (!p || p.exitCode !== null || p.signalCode !== null) return Promise.resolve();
    return new Promise((r) => { p.once('exit', () => r()); p.kill('SIGTERM'); });
  }
}

export const AGENT_CLI = path.join(__dirname, '../../src/cli/rephub-agent.js');

/** The agent as a real process: NBD server for real clients, mirroring to a hub. */
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
    if (!this.nbdPort) this.nbdPort = await freePort();
    if (!this.httpPort) this.httpPort = await freePort();
    this.stderr = '';
    this.proc = spawn(process.execPath, [AGENT_CLI, '--nbd', `127.0.0.1:${this.nbdPort}`, '--http', `127.0.0.1:${this.httpPort}`, ...this.args], { stdio: ['ignore', 'ignore', 'pipe'] });
    this.proc.stderr!.on('data', (d) => { this.stderr = (this.stderr + d).slice(-20000); });
    const net = await import('node:net');
    await waitFor('agent NBD listening', () => new Promise<boolean>((r) => {
      const s = net.connect(this.nbdPort, '127.0.0.1', () => { s.destroy(); r(true); });
      s.on('error', () => r(false));
    }), 15000, 50);
  }
  kill9(): Promise<void> {
    const p = this.proc!;
    if (p.exitCode !== null || p.signalCode !== null) return Promise.resolve();
    return new Promise((r) => { p.once('exit', () => r()); p.kill('SIGKILL'); });
  }
  stop(): Promise<void> {
    const p = this.proc;
    if (!p || p.exitCode !== null || p.signalCode !== null) return Promise.resolve();
    return new Promise((r) => { p.once('exit', () => r()); p.kill('SIGTERM'); });
  }
}

/** A hub protecting V1 with the recovery volume `rep`, its state under dir/hub. */
export function v1Hub(dir: string, rep: string, ...extra: string[]): HubProcess {
  return new HubProcess(['--vol', `V1=${rep}`, '--data', path.join(dir, 'hub'), ...extra]);
}

/** An agent of VM vm1 exporting `img` as V1 to the hub at `hubPort`, its dirty logs under dir/agent. */
export function v1Agent(dir: string, img: string, hubPort: number, ...extra: string[]): AgentProcess {
  return new AgentProcess(['--hub', `127.0.0.1:${hubPort}`, '--export', `V1=${img}`, '--state', path.join(dir, 'agent'), '--vm', 'vm1', ...extra]);
}
