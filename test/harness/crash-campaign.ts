// Crash campaign: hub and agent as real processes (the CLIs) on a temp dir with a 64 MiB image,
// a real NBD client writing through the agent all along (fio's nbd engine: randwrite of random
// or zero data and randtrimwrite, rate limited, restarted whenever it exits), and N times in a row
// a kill -9 of the hub or the agent (seeded random choice, at a random moment 0.2-2 s into the
// load). After each restart the writer keeps going a random 0-1 s (resync under load), then
// pauses; once the hub reports the volume converged, the image and the replica are compared byte
// for byte, then the writer resumes.
// RSS (VmRSS) of hub and agent is sampled throughout.
// The run itself; its command line is tools/crash-campaign.ts, its CI slice test/crash-campaign.e2e.test.ts.
import * as fs from 'node:fs';
import * as path from 'node:path';
import { tmpdir, makeImage, MiB, sleep } from './util';
import { HubProcess } from './hub-process';
import { AgentProcess } from './agent-process';
import { rssBytes } from './child';
import { mulberry32 } from './prng';
import {
  waitHubConverged,
  waitByteEqual,
  waitAgentClean,
  fmtRegions,
  ContinuousWriter,
  DiffReport,
} from './fault-harness';

export interface CampaignOptions {
  kills: number;
  seed: number;
  sizeMiB?: number; // image size, default 64
  rateMiB?: number; // writer rate limit, MiB/s, default 4
  convergeTimeoutMs?: number; // per kill, default 120 s
  keepGoing?: boolean; // go on after a mismatch (default: stop at the first)
  keep?: boolean; // keep the temp dir even when all is well
  out?: (line: string) => void;
  verbose?: boolean;
  /** Probability that a kill is not followed by the convergence check (the next kill then hits mid-resync); 0. */
  chain?: number;
  /** Detector self-check: after kill N converges, overwrite 4 KiB of the replica behind the hub's back. */
  corruptReplicaAt?: number;
}

export interface KillRecord {
  n: number;
  victim: 'hub' | 'agent';
  afterMs: number; // load time before the kill
  restartMs: number;
  loadAfterMs: number; // writes during the resync
  convergeMs: number; // from the writer's pause to the hub reporting converged; -1 if it never did
  equal: boolean;
  differingBytes: number;
  regions: DiffReport['regions'];
  agentClean: boolean; // every mirrored write acked and the agent's dirty log empty
  agentPending: number;
  agentDirtyBytes: number;
  hubSyncBytes: number;
  writes: number; // guest writes through the agent during this round
  error?: string;
}

export interface CampaignResult {
  seed: number;
  kills: number;
  hubKills: number;
  agentKills: number;
  converged: number; // kills after which the volume converged byte-equal
  bytesLost: number; // differing bytes summed over mismatches
  mismatches: KillRecord[];
  agentNotClean: number;
  maxHubRssMiB: number;
  maxAgentRssMiB: number;
  writerRuns: number;
  writerFailedRuns: number;
  guestWrites: number;
  elapsedMs: number;
  dir: string;
  records: KillRecord[];
  tally: string;
  ok: boolean;
}

/** The measurements of one kill round, before its outcome is known. */
interface Round {
  n: number;
  victim: 'hub' | 'agent';
  afterMs: number;
  restartMs: number;
  loadAfterMs: number;
}

/** One campaign: owns the processes, the writer, the counters and the log lines. */
class CrashCampaign {
  readonly out: (line: string) => void;
  readonly size: number;
  readonly rate: number;
  readonly convergeTimeout: number;
  readonly rand: () => number; // kills: victim, moment, load after restart (the seed fixes this sequence)
  readonly wrand: () => number; // writer runs: their count depends on timing, so a stream of their own
  readonly t0 = Date.now();
  readonly dir = tmpdir('rephub-crash-');
  readonly img = path.join(this.dir, 'V1.img');
  readonly rep = path.join(this.dir, 'V1R');
  readonly hub: HubProcess;
  agent?: AgentProcess; // made once the hub has its port (kept across restarts)
  readonly writer: ContinuousWriter;
  readonly records: KillRecord[] = [];
  readonly mismatches: KillRecord[] = [];
  maxHub = 0;
  maxAgent = 0;
  hubKills = 0;
  agentKills = 0;
  converged = 0;
  bytesLost = 0;
  agentNotClean = 0;
  chained = 0;
  failed = false;
  // guest writes the agent has seen: its counter restarts with it, so fold it in before each agent kill
  agentWritesBase = 0;
  totalWrites = 0;
  totalAtCheck = 0;

  constructor(readonly o: CampaignOptions) {
    this.out = o.out ?? ((l: string) => process.stdout.write(`${l}\n`));
    this.size = (o.sizeMiB ?? 64) * MiB;
    this.rate = o.rateMiB ?? 4;
    this.convergeTimeout = o.convergeTimeoutMs ?? 120_000;
    this.rand = mulberry32(o.seed);
    this.wrand = mulberry32((o.seed ^ 0x9e3779b9) >>> 0);
    this.hub = new HubProcess(['--vol', `V1=${this.rep}`, '--data', path.join(this.dir, 'hub')]);
    this.writer = new ContinuousWriter(
      () => this.agent!.uri('V1'),
      () => this.writerArgs(),
    );
  }

  /**
   * Each run lasts 2-5 s and is one of: random data (60 %), all-zero data (20 %: the agent's
   * zero detection and the hub's known-zero regions), trims mixed with writes (20 %: NBD TRIM,
   * handed to the hub as dirty regions). Sector-granular sizes and offsets cross 64 KiB regions.
   */
  private writerArgs(): string[] {
    const k = this.wrand(),
      rate = this.rate;
    const mix = k < 0.6 ? ['--rw=randwrite'] : k < 0.8 ? ['--rw=randwrite', '--zero_buffers'] : ['--rw=randtrimwrite'];
    return [
      ...mix,
      '--bsrange=512-128k',
      '--blockalign=512',
      '--iodepth=8',
      `--size=${this.size}`,
      '--time_based',
      `--runtime=${2 + Math.floor(this.wrand() * 4)}`,
      `--rate=${rate}m,${rate}m,${rate}m`,
      `--randseed=${1 + Math.floor(this.wrand() * 1e9)}`,
    ];
  }

  sampleRss(): void {
    const hub = this.hub.proc,
      agent = this.agent?.proc;
    this.maxHub = Math.max(this.maxHub, rssBytes(hub?.exitCode === null ? hub.pid : undefined));
    this.maxAgent = Math.max(this.maxAgent, rssBytes(agent?.exitCode === null ? agent.pid : undefined));
  }

  /** Hub and agent up, the initial sync converged byte-equal. */
  async setUp(): Promise<void> {
    await this.hub.start();
    this.agent = new AgentProcess([
      '--hub',
      `127.0.0.1:${this.hub.port}`,
      '--export',
      `V1=${this.img}`,
      '--state',
      path.join(this.dir, 'agent'),
      '--vm',
      'vm1',
    ]);
    await this.agent.start();
    await waitHubConverged(this.hub, this.agent, this.convergeTimeout);
    const d0 = await waitByteEqual(this.img, this.rep, this.size);
    if (!d0.equal) throw new Error(`initial sync not byte-equal: ${fmtRegions(d0)}`);
    this.out(
      `crash campaign: seed=${this.o.seed} kills=${this.o.kills} image=${this.size / MiB}MiB rate=${this.rate}MiB/s dir=${this.dir}`,
    );
  }

  /** Load, kill -9 a seeded victim, restart it, load during the resync. */
  async kill(n: number): Promise<Round> {
    const agent = this.agent!;
    this.writer.resume();
    const afterMs = Math.round(200 + this.rand() * 1800);
    const victim: 'hub' | 'agent' = this.rand() < 0.5 ? 'hub' : 'agent';
    const loadAfterMs = Math.round(this.rand() * 1000);
    await sleep(afterMs);
    const proc = victim === 'hub' ? this.hub : agent;
    const st = await agent.status().catch(() => null);
    if (victim === 'agent') {
      this.totalWrites += (st ? st.writes : this.agentWritesBase) - this.agentWritesBase;
      this.agentWritesBase = 0;
    }
    await proc.kill9();
    if (victim === 'agent') this.writer.interrupt(); // its NBD connection is gone
    if (victim === 'hub') this.hubKills++;
    else this.agentKills++;
    const tr = Date.now();
    await proc.start();
    const restartMs = Date.now() - tr;
    await sleep(loadAfterMs);
    return { n, victim, afterMs, restartMs, loadAfterMs };
  }

  /** The writer paused: wait for convergence, then compare byte for byte and read both sides' state. */
  async check(r: Round): Promise<KillRecord> {
    const hub = this.hub,
      agent = this.agent!;
    await this.writer.pause();
    const rec: KillRecord = {
      ...r,
      convergeMs: -1,
      equal: false,
      differingBytes: 0,
      regions: [],
      agentClean: false,
      agentPending: 0,
      agentDirtyBytes: 0,
      hubSyncBytes: 0,
      writes: 0,
    };
    try {
      rec.convergeMs = await waitHubConverged(hub, agent, this.convergeTimeout);
      if (this.o.corruptReplicaAt === r.n) this.corruptReplica();
      const st2 = await agent.status();
      // the agent's counter restarts with it: count up to the kill, then from its restart
      this.totalWrites += st2.writes - this.agentWritesBase;
      this.agentWritesBase = st2.writes;
      rec.writes = this.totalWrites - this.totalAtCheck; // since the last check
      this.totalAtCheck = this.totalWrites;
      const d = await waitByteEqual(this.img, this.rep, this.size, 10_000);
      rec.equal = d.equal;
      rec.differingBytes = d.differingBytes;
      rec.regions = d.regions;
      const a = await waitAgentClean(agent, 5_000);
      rec.agentClean = a.clean;
      rec.agentPending = a.status.pendingWrites;
      rec.agentDirtyBytes = a.status.volumes[0].dirtyBytes;
      rec.hubSyncBytes = (await hub.volume('V1')).syncBytes;
    } catch (e) {
      rec.error = (e as Error).message;
    }
    return rec;
  }

  /** Detector self-check: 4 KiB of the replica overwritten behind the hub's back. */
  private corruptReplica(): void {
    const fd = fs.openSync(this.rep, 'r+');
    const off = Math.floor(this.wrand() * (this.size / 4096)) * 4096;
    fs.writeSync(fd, Buffer.alloc(4096, 0xa5), 0, 4096, off);
    fs.closeSync(fd);
    this.out(`    (self-check: 4 KiB of the replica overwritten at ${off} behind the hub's back)`);
  }

  roundHead(r: Round): string {
    return (
      `kill ${String(r.n).padStart(3)}/${this.o.kills} ${r.victim.padEnd(5)} after ${(r.afterMs / 1000).toFixed(2)}s load: ` +
      `restart ${(r.restartMs / 1000).toFixed(2)}s, +${(r.loadAfterMs / 1000).toFixed(2)}s load, `
    );
  }

  /** Count the round and print its line (and, on a mismatch, what both sides say). */
  async record(rec: KillRecord): Promise<void> {
    this.records.push(rec);
    if (rec.equal) this.converged++;
    if (!rec.agentClean && !rec.error) this.agentNotClean++;
    const head = `${this.roundHead(rec)}${rec.writes} writes, `;
    if (rec.error) {
      this.failed = true;
      this.mismatches.push(rec);
      this.out(`${head}NOT CONVERGED: ${rec.error}`);
    } else if (!rec.equal) {
      this.failed = true;
      this.mismatches.push(rec);
      this.bytesLost += rec.differingBytes;
      await this.reportMismatch(head, rec);
    } else {
      this.out(
        `${head}converged in ${(rec.convergeMs / 1000).toFixed(2)}s, byte-equal` +
          (rec.agentClean
            ? ''
            : `; agent not clean: ${rec.agentPending} unacked writes, ${(rec.agentDirtyBytes / MiB).toFixed(1)} MiB dirty`),
      );
    }
    if (this.o.verbose && !rec.equal) this.out(this.agent!.stderr.slice(-4000));
  }

  private async reportMismatch(head: string, rec: KillRecord): Promise<void> {
    const hub = this.hub,
      agent = this.agent!;
    const diff = { equal: false, differingBytes: rec.differingBytes, regions: rec.regions };
    this.out(
      `${head}converged in ${(rec.convergeMs / 1000).toFixed(2)}s, MISMATCH: ${rec.differingBytes} bytes differ ` +
        `in ${rec.regions.length} run(s): ${fmtRegions(diff, 12)}`,
    );
    const hubSt = await hub.volume('V1').catch(() => null),
      agSt = await agent.status().catch(() => null);
    this.out(`    hub V1: ${JSON.stringify(hubSt)}`);
    this.out(`    agent: ${JSON.stringify(agSt)}`);
    this.out(
      `    sequence so far: ${this.records.map((r) => `${r.victim}@${r.afterMs}ms+${r.loadAfterMs}ms`).join(' ')}`,
    );
    fs.writeFileSync(path.join(this.dir, `mismatch-${rec.n}.hub.log`), hub.stderr);
    fs.writeFileSync(path.join(this.dir, `mismatch-${rec.n}.agent.log`), agent.stderr);
  }

  async run(): Promise<void> {
    await this.setUp();
    this.writer.start();
    for (let n = 1; n <= this.o.kills; n++) {
      const r = await this.kill(n);
      if (this.o.chain && n < this.o.kills && this.rand() < this.o.chain) {
        this.chained++;
        this.out(`${this.roundHead(r)}chained: next kill before convergence`);
        continue;
      }
      await this.record(await this.check(r));
      if (this.failed && !this.o.keepGoing) break;
    }
  }

  aborted(e: Error): void {
    const hub = this.hub,
      agent = this.agent;
    this.failed = true;
    this.out(`crash campaign: aborted: ${e.stack}`);
    fs.writeFileSync(path.join(this.dir, 'aborted.hub.log'), hub.stderr);
    fs.writeFileSync(path.join(this.dir, 'aborted.agent.log'), agent?.stderr ?? '');
    this.out(`    hub exit ${hub.proc?.exitCode ?? hub.proc?.signalCode}, stderr tail: ${hub.stderr.slice(-1500)}`);
    this.out(
      `    agent exit ${agent?.proc?.exitCode ?? agent?.proc?.signalCode}, stderr tail: ${(agent?.stderr ?? '').slice(-1500)}`,
    );
  }

  /** The tally lines, and the result. */
  summary(): CampaignResult {
    const o = this.o,
      writer = this.writer;
    const kills = this.hubKills + this.agentKills;
    const maxHubRssMiB = Math.round(this.maxHub / MiB),
      maxAgentRssMiB = Math.round(this.maxAgent / MiB);
    const tally =
      `crash campaign: kills=${kills} (hub=${this.hubKills} agent=${this.agentKills}) converged=${this.converged} ` +
      `bytes_lost=${this.bytesLost} maxHubRssMiB=${maxHubRssMiB} maxAgentRssMiB=${maxAgentRssMiB}`;
    const checks = kills - this.chained;
    const ok = !this.failed && this.converged === checks && kills === o.kills;
    const elapsedMs = Date.now() - this.t0;
    this.out(tally);
    this.out(
      `crash campaign: seed=${o.seed} elapsed=${(elapsedMs / 1000).toFixed(0)}s writer_runs=${writer.runs} ` +
        `(failed ${writer.failedRuns}) guest_writes=${this.totalWrites} agent_not_clean_after_converge=${this.agentNotClean} ` +
        `chained=${this.chained} checks=${checks} mismatches=${this.mismatches.length}${ok && !o.keep ? '' : ` dir=${this.dir}`}`,
    );
    if (ok && !o.keep) fs.rmSync(this.dir, { recursive: true, force: true });
    return {
      seed: o.seed,
      kills,
      hubKills: this.hubKills,
      agentKills: this.agentKills,
      converged: this.converged,
      bytesLost: this.bytesLost,
      mismatches: this.mismatches,
      agentNotClean: this.agentNotClean,
      maxHubRssMiB,
      maxAgentRssMiB,
      writerRuns: writer.runs,
      writerFailedRuns: writer.failedRuns,
      guestWrites: this.totalWrites,
      elapsedMs,
      dir: this.dir,
      records: this.records,
      tally,
      ok,
    };
  }
}

export async function runCampaign(o: CampaignOptions): Promise<CampaignResult> {
  const c = new CrashCampaign(o);
  makeImage(c.img, c.size, 0.3);
  const sampler = setInterval(() => c.sampleRss(), 200);
  try {
    await c.run();
  } catch (e) {
    c.aborted(e as Error);
  } finally {
    clearInterval(sampler);
    await c.writer.stop();
    await c.agent?.stop().catch(() => undefined);
    await c.hub.stop().catch(() => undefined);
  }
  return c.summary();
}
