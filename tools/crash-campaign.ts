#!/usr/bin/env node
// Crash campaign: hub and agent as real processes (the CLIs) on a temp dir with a 64 MiB image,
// a real NBD client writing through the agent all along (fio's nbd engine: randwrite of random
// or zero data and randtrimwrite, rate limited, restarted whenever it exits), and N times in a row a kill -9 of the hub or the agent
// (seeded random choice, at a random moment 0.2-2 s into the load). After each restart the
// writer keeps going a random 0-1 s (resync under load), then pauses; once the hub reports the
// volume converged, the image and the replica are compared byte for byte, then the writer resumes.
// RSS (VmRSS) of hub and agent is sampled throughout.
//
//   node dist/tools/crash-campaign.js [--kills 100] [--seed N] [--size-mib 64] [--rate-mib 4]
//                                     [--keep-going] [--keep] [--verbose] [--chain P] [--self-check-corrupt-at K]
//
// Prints one line per kill and a tally:
//   crash campaign: kills=N (hub=a agent=b) converged=N bytes_lost=0 maxHubRssMiB=.. maxAgentRssMiB=..
// Exits 1 on any mismatch or a volume that does not converge; the temp dir is then kept.
import * as fs from 'node:fs';
import * as path from 'node:path';
import { tmpdir, makeImage } from '../test/helpers/util';
import { HubProcess, AgentProcess } from '../test/helpers/hub-process';
import {
  MiB, rng, sleep, rssBytes, waitHubConverged, waitByteEqual, waitAgentClean, fmtRegions, ContinuousWriter, DiffReport,
} from '../test/helpers/fault-harness';

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
  /** Probability that a kill is not followed by the convergence check: the next kill then hits mid-resync. Default 0. */
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

export async function runCampaign(o: CampaignOptions): Promise<CampaignResult> {
  const out = o.out ?? ((l: string) => process.stdout.write(`${l}\n`));
  const size = (o.sizeMiB ?? 64) * MiB;
  const rate = o.rateMiB ?? 4;
  const convergeTimeout = o.convergeTimeoutMs ?? 120_000;
  const rand = rng(o.seed); // kills: victim, moment, load after restart (the seed fixes this sequence)
  const wrand = rng((o.seed ^ 0x9e3779b9) >>> 0); // writer runs: their count depends on timing, so a stream of their own
  const t0 = Date.now();
  const dir = tmpdir('rephub-crash-');
  const img = path.join(dir, 'V1.img'), rep = path.join(dir, 'V1R');
  makeImage(img, size, 0.3);
  const hub = new HubProcess(['--vol', `V1=${rep}`, '--data', path.join(dir, 'hub')]);
  let agent: AgentProcess | undefined; // made once the hub has its port (kept across restarts)
  let maxHub = 0, maxAgent = 0;
  const sampler = setInterval(() => {
    maxHub = Math.max(maxHub, rssBytes(hub.proc?.exitCode === null ? hub.proc.pid : undefined));
    maxAgent = Math.max(maxAgent, rssBytes(agent?.proc?.exitCode === null ? agent.proc.pid : undefined));
  }, 200);
  // Each run lasts 2-5 s and is one of: random data (60 %), all-zero data (20 %: the agent's
  // zero detection and the hub's known-zero regions), trims mixed with writes (20 %: NBD TRIM,
  // handed to the hub as dirty regions). Sector-granular sizes and offsets cross 64 KiB regions.
  const writer = new ContinuousWriter(() => agent!.uri('V1'), () => {
    const k = wrand();
    const mix = k < 0.6 ? ['--rw=randwrite'] : k < 0.8 ? ['--rw=randwrite', '--zero_buffers'] : ['--rw=randtrimwrite'];
    return [
      ...mix, '--bsrange=512-128k', '--blockalign=512', '--iodepth=8', `--size=${size}`,
      '--time_based', `--runtime=${2 + Math.floor(wrand() * 4)}`, `--rate=${rate}m,${rate}m,${rate}m`, `--randseed=${1 + Math.floor(wrand() * 1e9)}`,
    ];
  });
  const records: KillRecord[] = [];
  const mismatches: KillRecord[] = [];
  let hubKills = 0, agentKills = 0, converged = 0, bytesLost = 0, agentNotClean = 0;
  let failed = false;
  let chained = 0;
  // guest writes the agent has seen: its counter restarts with it, so fold it in before each agent kill
  let agentWritesBase = 0, totalWrites = 0, totalAtCheck = 0;
  try {
    await hub.start();
    agent = new AgentProcess(['--hub', `127.0.0.1:${hub.port}`, '--export', `V1=${img}`, '--state', path.join(dir, 'agent'), '--vm', 'vm1']);
    await agent.start();
    await waitHubConverged(hub, agent, convergeTimeout);
    const d0 = await waitByteEqual(img, rep, size);
    if (!d0.equal) throw new Error(`initial sync not byte-equal: ${fmtRegions(d0)}`);
    out(`crash campaign: seed=${o.seed} kills=${o.kills} image=${size / MiB}MiB rate=${rate}MiB/s dir=${dir}`);
    writer.start();
    for (let n = 1; n <= o.kills; n++) {
      writer.resume();
      const afterMs = Math.round(200 + rand() * 1800);
      const victim: 'hub' | 'agent' = rand() < 0.5 ? 'hub' : 'agent';
      const loadAfterMs = Math.round(rand() * 1000);
      await sleep(afterMs);
      const proc = victim === 'hub' ? hub : agent;
      const st = await agent.status().catch(() => null);
      if (victim === 'agent') { totalWrites += (st ? st.writes : agentWritesBase) - agentWritesBase; agentWritesBase = 0; }
      await proc.kill9();
      if (victim === 'agent') writer.interrupt(); // its NBD connection is gone
      if (victim === 'hub') hubKills++; else agentKills++;
      const tr = Date.now();
      await proc.start();
      const restartMs = Date.now() - tr;
      await sleep(loadAfterMs);
      if (o.chain && n < o.kills && rand() < o.chain) {
        chained++;
        out(`kill ${String(n).padStart(3)}/${o.kills} ${victim.padEnd(5)} after ${(afterMs / 1000).toFixed(2)}s load: restart ${(restartMs / 1000).toFixed(2)}s, ` +
          `+${(loadAfterMs / 1000).toFixed(2)}s load, chained: next kill before convergence`);
        continue;
      }
      await writer.pause();
      const rec: KillRecord = {
        n, victim, afterMs, restartMs, loadAfterMs, convergeMs: -1, equal: false, differingBytes: 0, regions: [],
        agentClean: false, agentPending: 0, agentDirtyBytes: 0, hubSyncBytes: 0, writes: 0,
      };
      try {
        rec.convergeMs = await waitHubConverged(hub, agent, convergeTimeout);
        if (o.corruptReplicaAt === n) {
          const fd = fs.openSync(rep, 'r+');
          const off = Math.floor(wrand() * (size / 4096)) * 4096;
          fs.writeSync(fd, Buffer.alloc(4096, 0xa5), 0, 4096, off);
          fs.closeSync(fd);
          out(`    (self-check: 4 KiB of the replica overwritten at ${off} behind the hub's back)`);
        }
        const st2 = await agent.status();
        // the agent's counter restarts with it: count up to the kill, then from its restart
        totalWrites += st2.writes - agentWritesBase;
        agentWritesBase = st2.writes;
        rec.writes = totalWrites - totalAtCheck; // since the last check
        totalAtCheck = totalWrites;
        const d = await waitByteEqual(img, rep, size, 10_000);
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
      records.push(rec);
      if (rec.equal) converged++;
      if (!rec.agentClean && !rec.error) agentNotClean++;
      const head = `kill ${String(n).padStart(3)}/${o.kills} ${victim.padEnd(5)} after ${(afterMs / 1000).toFixed(2)}s load: restart ${(restartMs / 1000).toFixed(2)}s, ` +
        `+${(loadAfterMs / 1000).toFixed(2)}s load, ${rec.writes} writes, `;
      if (rec.error) {
        failed = true;
        mismatches.push(rec);
        out(`${head}NOT CONVERGED: ${rec.error}`);
      } else if (!rec.equal) {
        failed = true;
        mismatches.push(rec);
        bytesLost += rec.differingBytes;
        out(`${head}converged in ${(rec.convergeMs / 1000).toFixed(2)}s, MISMATCH: ${rec.differingBytes} bytes differ in ${rec.regions.length} run(s): ${fmtRegions({ equal: false, differingBytes: rec.differingBytes, regions: rec.regions }, 12)}`);
        const hubSt = await hub.volume('V1').catch(() => null), agSt = await agent.status().catch(() => null);
        out(`    hub V1: ${JSON.stringify(hubSt)}`);
        out(`    agent: ${JSON.stringify(agSt)}`);
        out(`    sequence so far: ${records.map((r) => `${r.victim}@${r.afterMs}ms+${r.loadAfterMs}ms`).join(' ')}`);
        fs.writeFileSync(path.join(dir, `mismatch-${n}.hub.log`), hub.stderr);
        fs.writeFileSync(path.join(dir, `mismatch-${n}.agent.log`), agent.stderr);
      } else {
        out(`${head}converged in ${(rec.convergeMs / 1000).toFixed(2)}s, byte-equal` +
          (rec.agentClean ? '' : `; agent not clean: ${rec.agentPending} unacked writes, ${(rec.agentDirtyBytes / MiB).toFixed(1)} MiB dirty`));
      }
      if (o.verbose && !rec.equal) out(agent.stderr.slice(-4000));
      if (failed && !o.keepGoing) break;
    }
  } catch (e) {
    failed = true;
    out(`crash campaign: aborted: ${(e as Error).stack}`);
    fs.writeFileSync(path.join(dir, 'aborted.hub.log'), hub.stderr);
    fs.writeFileSync(path.join(dir, 'aborted.agent.log'), agent?.stderr ?? '');
    out(`    hub exit ${hub.proc?.exitCode ?? hub.proc?.signalCode}, stderr tail: ${hub.stderr.slice(-1500)}`);
    out(`    agent exit ${agent?.proc?.exitCode ?? agent?.proc?.signalCode}, stderr tail: ${(agent?.stderr ?? '').slice(-1500)}`);
  } finally {
    clearInterval(sampler);
    await writer.stop();
    await agent?.stop().catch(() => undefined);
    await hub.stop().catch(() => undefined);
  }
  const kills = hubKills + agentKills;
  const maxHubRssMiB = Math.round(maxHub / MiB), maxAgentRssMiB = Math.round(maxAgent / MiB);
  const tally = `crash campaign: kills=${kills} (hub=${hubKills} agent=${agentKills}) converged=${converged} bytes_lost=${bytesLost} maxHubRssMiB=${maxHubRssMiB} maxAgentRssMiB=${maxAgentRssMiB}`;
  const checks = kills - chained;
  const ok = !failed && converged === checks && kills === o.kills;
  const elapsedMs = Date.now() - t0;
  out(tally);
  out(`crash campaign: seed=${o.seed} elapsed=${(elapsedMs / 1000).toFixed(0)}s writer_runs=${writer.runs} (failed ${writer.failedRuns}) guest_writes=${totalWrites} ` +
    `agent_not_clean_after_converge=${agentNotClean} chained=${chained} checks=${checks} mismatches=${mismatches.length}${ok && !o.keep ? '' : ` dir=${dir}`}`);
  if (ok && !o.keep) fs.rmSync(dir, { recursive: true, force: true });
  return {
    seed: o.seed, kills, hubKills, agentKills, converged, bytesLost, mismatches, agentNotClean, maxHubRssMiB, maxAgentRssMiB,
    writerRuns: writer.runs, writerFailedRuns: writer.failedRuns, guestWrites: totalWrites, elapsedMs, dir, records, tally, ok,
  };
}

if (require.main === module) {
  const argv = process.argv.slice(2);
  const opt = (k: string) => { const i = argv.indexOf(`--${k}`); return i >= 0 ? argv[i + 1] : undefined; };
  if (argv.includes('--help') || argv.includes('-h')) {
    process.stdout.write('usage: crash-campaign [--kills 100] [--seed N] [--size-mib 64] [--rate-mib 4] [--keep-going] [--keep] [--verbose] [--chain P] [--self-check-corrupt-at K]\n' +
      '  --chain P: with probability P a kill is not followed by the check, so the next kill hits the resync\n' +
      '  --self-check-corrupt-at K: after kill K, overwrite 4 KiB of the replica behind the hub (the campaign must then report a mismatch)\n');
    process.exit(0);
  }
  const seed = opt('seed') !== undefined ? Number(opt('seed')) : Math.floor(Math.random() * 2 ** 31);
  const kills = Number(opt('kills') ?? 100);
  if (!Number.isInteger(kills) || kills < 1 || !Number.isFinite(seed)) {
    process.stderr.write('crash-campaign: --kills must be a positive integer and --seed a number\n');
    process.exit(2);
  }
  runCampaign({
    kills, seed, sizeMiB: opt('size-mib') ? Number(opt('size-mib')) : undefined, rateMiB: opt('rate-mib') ? Number(opt('rate-mib')) : undefined,
    keepGoing: argv.includes('--keep-going'), keep: argv.includes('--keep'), verbose: argv.includes('--verbose'),
    chain: opt('chain') ? Number(opt('chain')) : undefined,
    corruptReplicaAt: opt('self-check-corrupt-at') ? Number(opt('self-check-corrupt-at')) : undefined,
  }).then((r) => process.exit(r.ok ? 0 : 1), (e) => { process.stderr.write(`crash-campaign: ${e.stack}\n`); process.exit(2); });
}
