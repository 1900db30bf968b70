// The hub as a real process (the CLI), so tests and campaigns can kill -9 it, sample its memory
// and tell a crash from a stop; or a hub someone else runs, reached by its addresses.
import { spawn, ChildProcess } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { freePort } from './ports';
import { waitFor, sha, sleep } from './util';
import { memoryOf, running, endProcess } from './child';
import { HEAP_FLAGS } from '../../src/cli/heap-flags';

export const CLI = path.join(__dirname, '../../src/cli/rephub.js');

export interface HubProcessOptions {
  /** The hub's stderr goes to this file (else its last 20 kB are kept in `stderr`). */
  logFile?: string;
  /** Abort a /status request after this long (default: wait). */
  statusTimeoutMs?: number;
  /** How long start() waits for the hub to answer /status (default 15 s). */
  startTimeoutMs?: number;
}

export interface ProcessExit {
  code: number | null;
  signal: string | null;
}

export class HubProcess {
  proc?: ChildProcess;
  host = '127.0.0.1';
  port = 0;
  httpPort = 0;
  nbdPort = 0;
  stderr = '';
  /** Set when the process ended without stop() or kill9(): a crash. */
  exit: ProcessExit | null = null;
  private isForeign = false;
  private foreignPid?: number;
  private httpHost = '127.0.0.1';
  private ending = false; // stop() or kill9() under way: the exit is not a crash

  constructor(
    readonly args: string[],
    readonly opts: HubProcessOptions = {},
  ) {}

  /** A hub already running elsewhere: never started or stopped here. */
  static foreign(host: string, port: number, http: string, pid?: number): HubProcess {
    const h = new HubProcess([], { statusTimeoutMs: 5000 });
    const m = /^(.+):(\d+)$/.exec(http);
    if (!m) throw new Error(`hub http address: expected HOST:PORT, got "${http}"`);
    h.host = host;
    h.port = port;
    h.httpHost = m[1];
    h.httpPort = Number(m[2]);
    h.isForeign = true;
    h.foreignPid = pid;
    return h;
  }

  /** The status endpoint as HOST:PORT. */
  get http(): string {
    return `${this.httpHost}:${this.httpPort}`;
  }
  get pid(): number | undefined {
    return this.proc?.pid ?? this.foreignPid;
  }
  get logFile(): string {
    return this.opts.logFile ?? (this.isForeign ? '(foreign hub)' : '(stderr)');
  }

  /** The admin token file the hub reads: --admin-token-file, else its default under --data. */
  get adminTokenFile(): string {
    const arg = (name: string) => {
      const i = this.args.lastIndexOf(name);
      return i >= 0 ? this.args[i + 1] : undefined;
    };
    return path.resolve(arg('--admin-token-file') ?? path.join(arg('--data') ?? './rephub-data', 'admin-token'));
  }

  /** An operator action as the CLI sends it: the admin token and a JSON body. */
  post(action: string, body: object = {}): Promise<{ status: number; body: any }> {
    const token = fs.readFileSync(this.adminTokenFile, 'utf8').trim();
    return this.postRaw(action, JSON.stringify(body), {
      authorization: `Bearer ${token}`,
      'content-type': 'application/json',
    });
  }

  /** A POST with exactly these headers (tests of the operator gate). */
  async postRaw(action: string, body: string, headers: Record<string, string>): Promise<{ status: number; body: any }> {
    const r = await fetch(`http://${this.http}${action}`, { method: 'POST', body, headers });
    return { status: r.status, body: await r.json() };
  }

  async start(): Promise<void> {
    const picked = !this.port && !this.httpPort && !this.nbdPort;
    for (let attempt = 1; ; attempt++) {
      try {
        return await this.startOnce();
      } catch (e) {
        // A port the kernel gave as free can be taken (an outgoing connection's) before the hub
        // binds it: exit code 3, an address in use. Ports this start picked are picked again.
        const code = this.exit?.code ?? this.proc?.exitCode;
        if (!picked || attempt >= 3 || code !== 3) throw e;
        this.port = this.httpPort = this.nbdPort = 0;
      }
    }
  }

  private async startOnce(): Promise<void> {
    if (!this.port) this.port = await freePort();
    if (!this.httpPort) this.httpPort = await freePort();
    if (!this.nbdPort) this.nbdPort = await freePort();
    this.stderr = '';
    this.exit = null;
    const args = [
      CLI,
      '--listen',
      `127.0.0.1:${this.port}`,
      '--http',
      `127.0.0.1:${this.httpPort}`,
      '--nbd',
      `127.0.0.1:${this.nbdPort}`,
      ...this.args,
    ];
    this.ending = false;
    const proc = this.spawnLogged(args);
    this.proc = proc;
    proc.on('exit', (code, signal) => {
      if (proc !== this.proc || this.ending) return;
      this.exit = { code, signal };
      // A crash: say so now, with the log's tail, whatever the test then reports (often only a
      // refused connection).
      console.error(`hub on port ${this.port} exited unexpectedly (${code ?? signal}): ${this.logTail()}`);
    });
    await this.waitListening(proc);
  }

  private spawnLogged(args: string[]): ChildProcess {
    if (!this.opts.logFile) {
      const proc = spawn(process.execPath, [...HEAP_FLAGS, ...args], { stdio: ['ignore', 'ignore', 'pipe'] });
      proc.stderr!.on('data', (d) => {
        this.stderr = (this.stderr + d).slice(-20000);
      });
      return proc;
    }
    const fd = fs.openSync(this.opts.logFile, 'a');
    try {
      return spawn(process.execPath, [...HEAP_FLAGS, ...args], { stdio: ['ignore', 'ignore', fd] });
    } finally {
      fs.closeSync(fd);
    }
  }

  /** Until /status answers; fails at once if the process exits first (with its log tail). */
  private async waitListening(proc: ChildProcess): Promise<void> {
    const timeoutMs = this.opts.startTimeoutMs ?? 15_000;
    const until = Date.now() + timeoutMs;
    for (;;) {
      if (this.exit || !running(proc)) {
        const how = this.exit ?? { code: proc.exitCode, signal: proc.signalCode };
        throw new Error(`hub exited at start (${JSON.stringify(how)}): ${this.logTail()}`);
      }
      if (
        await this.status().then(
          () => true,
          () => false,
        )
      )
        return;
      if (Date.now() > until)
        throw new Error(`timed out waiting for hub listening (${timeoutMs} ms): ${this.logTail(5)}`);
      await sleep(50);
    }
  }

  async status(): Promise<any> {
    const t = this.opts.statusTimeoutMs;
    const r = await fetch(`http://${this.http}/status`, t ? { signal: AbortSignal.timeout(t) } : undefined);
    return r.json();
  }

  /** The volume protecting with nothing dirty, and its replica byte-equal to the image. */
  async converged(name: string, img: string, rep: string, timeoutMs = 60_000): Promise<void> {
    await waitFor(
      `${name} protecting and clean`,
      async () => {
        const v = await this.volume(name);
        return v.state === 'protecting' && v.dirtyBytes === 0;
      },
      timeoutMs,
      50,
    );
    await waitFor(`${name} byte-equal`, () => sha(img) === sha(rep), 30_000, 100);
  }

  async volume(name: string): Promise<any> {
    return (await this.status()).volumes.find((v: any) => v.name === name);
  }

  /** VmRSS / VmHWM of the hub in MiB (null when unknown). */
  mem(): { rss: number; hwm: number } | null {
    const m = memoryOf(this.pid);
    return m && { rss: m.rssBytes / (1 << 20), hwm: m.peakBytes / (1 << 20) };
  }

  /** The last `n` lines the hub logged. */
  logTail(n = 30): string {
    let text = this.stderr;
    if (this.opts.logFile) {
      try {
        text = fs.readFileSync(this.opts.logFile, 'utf8');
      } catch {
        return '';
      }
    }
    return text.trim().split('\n').slice(-n).join('\n');
  }

  kill9(): Promise<void> {
    this.ending = true;
    return endProcess(this.proc, 'SIGKILL');
  }

  stop(): Promise<void> {
    this.ending = true;
    return endProcess(this.proc, 'SIGTERM');
  }
}

/** A hub protecting V1 with the recovery volume `rep`, its state under dir/hub. */
export function v1Hub(dir: string, rep: string, ...extra: string[]): HubProcess {
  return new HubProcess(['--vol', `V1=${rep}`, '--data', path.join(dir, 'hub'), ...extra]);
}
