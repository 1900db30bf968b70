// The agent that rephub-qemu runs beside QEMU: a child process (the same rephub-agent CLI an
// operator runs), started with one export per tapped disk on a UNIX socket, awaited until it
// says every export is served (--ready-fd), and stopped with SIGTERM once QEMU has exited, so
// that it drains its mirror and sends AGENT_SHUTDOWN. It runs in a process group of its own:
// a terminal's Ctrl-C reaches QEMU, and the agent stops only after QEMU is gone. A second pipe
// (the agent's --parent-fd) tells it QEMU's pid and, by its EOF, that rephub-qemu is gone: a
// SIGKILLed rephub-qemu leaves QEMU running, and the agent then serves it until it exits.
import { spawn, ChildProcess } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import type { QemuPlan } from '../qemu/plan';
import { HEAP_FLAGS } from './heap-flags';

export const AGENT_CLI = path.join(__dirname, 'rephub-agent.js');
/** How long the agent may take to open its images and listen. */
const READY_TIMEOUT_MS = 60_000;
/** How long it may take to drain and say goodbye (its own drain bound is 5 s). */
const STOP_TIMEOUT_MS = 30_000;

export interface AgentPaths {
  socket: string;
  httpSocket: string;
  state: string;
  logFile: string;
}

export function agentArgs(plan: QemuPlan, p: AgentPaths): string[] {
  const r = plan.repagent;
  const host = r.host.includes(':') ? `[${r.host}]` : r.host;
  const args = ['run', '--hub', `${host}:${r.port}`, '--vm', plan.vm, '--nbd', `unix:${p.socket}`];
  args.push('--http', `unix:${p.httpSocket}`, '--state', p.state, '--ready-fd', '3', '--parent-fd', '4');
  for (const d of plan.disks) args.push('--export', `${d.volume}=${d.image}`);
  const tls: Array<[string, string | undefined]> = [
    ['--psk-file', r.pskFile],
    ['--tls-cert', r.tlsCert],
    ['--tls-key', r.tlsKey],
    ['--tls-ca', r.tlsCa],
    ['--tls-servername', r.tlsServername],
  ];
  for (const [flag, v] of tls) if (v !== undefined) args.push(flag, v);
  return args;
}

export class QemuAgent {
  private proc?: ChildProcess;
  private exitInfo?: { code: number | null; signal: string | null };
  private readonly exited: Promise<void>;
  private onExit!: () => void;
  private logStart = 0;

  constructor(
    private readonly args: string[],
    readonly logFile: string,
  ) {
    this.exited = new Promise((r) => (this.onExit = r));
  }

  get exit() {
    return this.exitInfo;
  }

  /** Resolves once every export is served; rejects with the agent's own error if it exits first. */
  async start(): Promise<void> {
    fs.mkdirSync(path.dirname(this.logFile), { recursive: true });
    const fd = fs.openSync(this.logFile, 'a');
    this.logStart = fs.fstatSync(fd).size;
    try {
      this.proc = spawn(process.execPath, [...HEAP_FLAGS, AGENT_CLI, ...this.args], {
        stdio: ['ignore', fd, fd, 'pipe', 'pipe'],
        detached: true,
      });
    } finally {
      fs.closeSync(fd);
    }
    this.proc.on('exit', (code, signal) => {
      this.exitInfo = { code, signal };
      this.onExit();
    });
    const ready = new Promise<boolean>((res) => {
      let text = '';
      const pipe = this.proc!.stdio[3] as NodeJS.ReadableStream;
      pipe.on('data', (d) => {
        text += String(d);
        if (text.includes('ready\n')) res(true);
      });
      pipe.on('error', () => undefined);
      void this.exited.then(() => res(false));
    });
    let timer: NodeJS.Timeout | undefined;
    const timeout = new Promise<'timeout'>((res) => (timer = setTimeout(() => res('timeout'), READY_TIMEOUT_MS)));
    const ok = await Promise.race([ready, timeout]);
    clearTimeout(timer);
    if (ok === true) return;
    if (ok === 'timeout') {
      await this.stop();
      throw new Error(`the agent did not serve its exports within ${READY_TIMEOUT_MS / 1000} s (log: ${this.logFile})`);
    }
    throw new Error(this.failure());
  }

  /** What the agent said when it failed: its CLI's error line, else its last error log. */
  private failure(): string {
    let text = '';
    try {
      const b = fs.readFileSync(this.logFile);
      text = b.subarray(this.logStart).toString('utf8');
    } catch {
      // no log: the exit status is all there is
    }
    const lines = text.trim().split('\n');
    const cli = lines.filter((l) => l.startsWith('rephub-agent: ')).pop();
    if (cli) return cli.slice('rephub-agent: '.length);
    for (const l of lines.reverse()) {
      try {
        const j = JSON.parse(l);
        if (j.level >= 50) return `${j.msg}${j.cause ? `: ${j.cause}` : ''}`;
      } catch {
        // not a log line
      }
    }
    const how = this.exitInfo?.signal ?? `status ${this.exitInfo?.code}`;
    return `the agent exited (${how}); log: ${this.logFile}`;
  }

  /** SIGTERM: it drains, sends AGENT_SHUTDOWN and exits. Resolves with its exit, SIGKILL after the bound. */
  async stop(): Promise<{ code: number | null; signal: string | null; killed: boolean }> {
    if (!this.proc) return { code: 0, signal: null, killed: false };
    if (!this.exitInfo) this.proc.kill('SIGTERM');
    let timer: NodeJS.Timeout | undefined;
    const late = await Promise.race([
      this.exited.then(() => false),
      new Promise<boolean>((r) => (timer = setTimeout(() => r(true), STOP_TIMEOUT_MS))),
    ]);
    clearTimeout(timer);
    if (late) {
      this.proc.kill('SIGKILL');
      await this.exited;
    }
    return { ...this.exitInfo!, killed: late };
  }

  /** Tells the agent QEMU's pid, so that it serves QEMU on if rephub-qemu dies. */
  qemuStarted(pid: number): void {
    const pipe = this.proc?.stdio[4] as NodeJS.WritableStream | undefined;
    if (!pipe || this.exitInfo) return;
    pipe.on('error', () => undefined); // an agent gone already: its exit is reported elsewhere
    pipe.write(`qemu ${pid}\n`);
  }

  /** Called once if the agent exits on its own while QEMU runs. */
  onUnexpectedExit(fn: () => void): void {
    void this.exited.then(fn);
  }
}
