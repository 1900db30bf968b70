// Shared by the network-fault test and the crash campaign: a continuous NBD writer (fio's nbd
// engine, restarted whenever it exits, pausable), convergence waits on the real processes,
// a byte-for-byte comparison that names the regions that differ.
import * as fs from 'node:fs';
import { spawn, ChildProcess } from 'node:child_process';
import type { HubProcess } from './hub-process';
import type { AgentProcess } from './agent-process';
import { MiB, sleep } from './util';

export interface DiffReport {
  equal: boolean;
  differingBytes: number;
  regions: { offset: number; length: number; differingBytes: number }[]; // merged runs of differing regions
}

/** Compare two files region by region (missing tails read as zeroes). */
export function diffFiles(a: string, b: string, size: number, regionSize = 64 * 1024): DiffReport {
  const fa = fs.openSync(a, 'r'),
    fb = fs.openSync(b, 'r');
  const chunk = 4 * MiB;
  const ba = Buffer.alloc(chunk),
    bb = Buffer.alloc(chunk);
  const regions: DiffReport['regions'] = [];
  let differingBytes = 0;
  try {
    for (let off = 0; off < size; off += chunk) {
      const len = Math.min(chunk, size - off);
      ba.fill(0);
      bb.fill(0);
      fs.readSync(fa, ba, 0, len, off);
      fs.readSync(fb, bb, 0, len, off);
      if (ba.subarray(0, len).equals(bb.subarray(0, len))) continue;
      for (let r = 0; r < len; r += regionSize) {
        const rl = Math.min(regionSize, len - r);
        const x = ba.subarray(r, r + rl),
          y = bb.subarray(r, r + rl);
        if (x.equals(y)) continue;
        let n = 0;
        for (let i = 0; i < rl; i++) if (x[i] !== y[i]) n++;
        differingBytes += n;
        const last = regions[regions.length - 1];
        if (last && last.offset + last.length === off + r) {
          last.length += rl;
          last.differingBytes += n;
        } else regions.push({ offset: off + r, length: rl, differingBytes: n });
      }
    }
  } finally {
    fs.closeSync(fa);
    fs.closeSync(fb);
  }
  return { equal: regions.length === 0, differingBytes, regions };
}

export function fmtRegions(d: DiffReport, max = 20): string {
  const s = d.regions
    .slice(0, max)
    .map((r) => `[${r.offset}, ${r.offset + r.length}) (${r.differingBytes} bytes differ)`)
    .join(', ');
  return d.regions.length > max ? `${s}, ... ${d.regions.length - max} more` : s;
}

/**
 * The hub's view of convergence (README: volume protecting, nothing dirty) with the agent
 * connected and nothing left in its send queue. The last mirrored writes may still be on their
 * way into the hub: compare with waitByteEqual, which allows for that.
 */
export async function hubConverged(hub: HubProcess, agent: AgentProcess, vol = 'V1'): Promise<boolean> {
  const v = await hub.volume(vol);
  if (!v || v.state !== 'protecting' || v.dirtyBytes !== 0) return false;
  const a = await agent.status();
  if (!a.connected || a.queueBytes !== 0 || a.volumes.some((x: any) => x.volumeId < 0)) return false;
  const v2 = await hub.volume(vol);
  return v2.state === 'protecting' && v2.dirtyBytes === 0;
}

export async function waitHubConverged(
  hub: HubProcess,
  agent: AgentProcess,
  timeoutMs = 60_000,
  vol = 'V1',
): Promise<number> {
  const t0 = Date.now();
  let last = '';
  while (Date.now() - t0 < timeoutMs) {
    try {
      if (await hubConverged(hub, agent, vol)) return Date.now() - t0;
      const v = await hub.volume(vol),
        a = await agent.status();
      last = `hub ${v?.state} dirty ${v?.dirtyBytes}; agent connected ${a.connected} queue ${a.queueBytes} pending ${a.pendingWrites} dirty ${a.volumes?.[0]?.dirtyBytes}`;
    } catch (e) {
      last = (e as Error).message;
    }
    await sleep(50);
  }
  throw new Error(`hub not converged after ${timeoutMs} ms: ${last}`);
}

/** Compare until equal or `graceMs` passed (writes already sent may still be landing); the last diff. */
export async function waitByteEqual(a: string, b: string, size: number, graceMs = 10_000): Promise<DiffReport> {
  const t0 = Date.now();
  for (;;) {
    const d = diffFiles(a, b, size);
    if (d.equal || Date.now() - t0 > graceMs) return d;
    await sleep(250);
  }
}

/** Every mirrored write acked and the agent's dirty log drained (agent /status). */
export async function waitAgentClean(
  agent: AgentProcess,
  timeoutMs = 15_000,
): Promise<{ clean: boolean; status: any }> {
  const t0 = Date.now();
  for (;;) {
    const st = await agent.status();
    if (st.connected && st.pendingWrites === 0 && st.volumes.every((v: any) => v.dirtyBytes === 0))
      return { clean: true, status: st };
    if (Date.now() - t0 > timeoutMs) return { clean: false, status: st };
    await sleep(100);
  }
}

export interface FioRun {
  code: number | null;
  signal: string | null;
  startedAt: number;
  endedAt: number;
  ios: number;
  maxClatMs: number;
  stderr: string;
}

/** One fio run of randwrite through an NBD URI; resolves when it exits (never rejects). */
export function fioOnce(
  uri: string,
  args: string[],
  timeoutMs = 120_000,
): { proc: ChildProcess; done: Promise<FioRun> } {
  const startedAt = Date.now();
  const proc = spawn(
    'fio',
    ['--thread', '--name=w', '--ioengine=nbd', `--uri=${uri}`, '--output-format=json', ...args],
    { stdio: ['ignore', 'pipe', 'pipe'] },
  );
  let out = '',
    err = '';
  proc.stdout!.on('data', (d) => {
    if (out.length < 4 * MiB) out += d;
  });
  proc.stderr!.on('data', (d) => {
    err = (err + d).slice(-4000);
    // fio's nbd engine does not exit when the server dies: it spins on "nbd_poll: nothing to
    // poll for in state DEAD". The connection is gone for good, so end it.
    if (/state DEAD/.test(err) && proc.exitCode === null) proc.kill('SIGKILL');
  });
  const timer = setTimeout(() => proc.kill('SIGKILL'), timeoutMs);
  const done = new Promise<FioRun>((res) => {
    proc.on('exit', (code, signal) => {
      clearTimeout(timer);
      let ios = 0,
        maxClatMs = 0;
      try {
        const j = JSON.parse(out.slice(out.indexOf('{')));
        ios = j.jobs[0].write.total_ios + (j.jobs[0].trim?.total_ios ?? 0);
        maxClatMs = j.jobs[0].write.clat_ns.max / 1e6;
      } catch {
        /* fio failed before its report */
      }
      res({ code, signal, startedAt, endedAt: Date.now(), ios, maxClatMs, stderr: err });
    });
  });
  return { proc, done };
}

/**
 * A writer that never stops on its own: fio randwrite, rate-limited, restarted whenever it
 * exits (the agent was killed, or the run ended). pause() stops it in place (SIGSTOP: requests
 * the agent already has complete, nothing new is sent) and waits until the agent is idle.
 */
export class ContinuousWriter {
  private cur?: ChildProcess;
  private running = false;
  private paused = false;
  private loop?: Promise<void>;
  runs = 0;
  failedRuns = 0;
  ios = 0;
  maxClatMs = 0;
  constructor(
    private readonly uri: () => string,
    private readonly args: () => string[],
  ) {}

  start(): void {
    if (this.running) return;
    this.running = true;
    this.loop = (async () => {
      while (this.running) {
        while (this.paused && this.running) await sleep(20);
        if (!this.running) break;
        const { proc, done } = fioOnce(this.uri(), this.args(), 600_000);
        this.cur = proc;
        const r = await done;
        this.cur = undefined;
        this.runs++;
        this.ios += r.ios;
        if (r.code !== 0) {
          this.failedRuns++;
          await sleep(100);
        } else this.maxClatMs = Math.max(this.maxClatMs, r.maxClatMs);
      }
    })();
  }

  async pause(settleMs = 150): Promise<void> {
    this.paused = true;
    this.cur?.kill('SIGSTOP');
    await sleep(settleMs); // requests already sent land on the image meanwhile
  }

  /** End the current run (e.g. its NBD server was killed); the loop starts a new one. */
  interrupt(): void {
    const p = this.cur;
    if (p && p.exitCode === null) {
      p.kill('SIGCONT');
      p.kill('SIGKILL');
    }
  }

  resume(): void {
    this.paused = false;
    this.cur?.kill('SIGCONT');
  }

  async stop(): Promise<void> {
    this.running = false;
    const p = this.cur;
    if (p) {
      p.kill('SIGCONT');
      p.kill('SIGKILL');
    }
    await this.loop;
  }
}
