// A fuzzing campaign against a live hub process. A good agent (the real ReplicationAgent over a
// file image) protects V1 and keeps writing, while `conns` workers open connection after
// connection and send random bytes, mutated and hostile frames, truncated handshakes, trickled
// streams, claims of V1, and floods of PINGs from a peer that does not read. Every stream is run
// through HubModel first, so the fuzzer knows what the hub must answer (which ERROR code, or
// nothing) and checks it: ERROR frame and close where the spec says so, PONG for every PING before
// the error, HELLO only in reply to HELLO, no START_PROTECT for a held volume, no hang. Hub
// crashes, hangs and RSS are tracked; at the end the good agent's volume must be byte-equal.
// Used by tools/fuzz-hub.ts (CLI) and test/fuzz-hub.e2e.test.ts (CI slice). This file runs the
// campaign from start to end; the sessions are in sessions.ts and claim-sessions.ts.
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { Cmd, encodeReportVmVolumes, encodeAgentShutdown } from '../../../protocol';
import type { ReplicationAgent } from '../../../src/agent/agent';
import { HubProcess } from '../hub-process';
import { startTestAgent } from '../test-agent';
import { Rng } from '../prng';
import { MiB, sleep, sha } from '../util';
import { Peer } from './peer';
import { FuzzCtx } from './hub-model';
import { CampaignOptions, CampaignResult, emptyResult, fail } from './result';
import { FuzzRun } from './run';
import { worker, silentSession } from './sessions';

export type { CampaignOptions, CampaignResult } from './result';
export { tally, details } from './result';

const FUZZ_VOLUME_BYTES = 4 * MiB;

/** The hub to attack: the one given, or a new process with V1 and FZ1.. recovery volumes. */
async function hubUnderTest(
  o: CampaignOptions,
  dir: string,
  goodVolume: string,
): Promise<{ hub: HubProcess; fuzzVolumes: string[] }> {
  if (o.hub) {
    const hub = HubProcess.foreign(o.hub.host, o.hub.port, o.hub.http, o.hub.pid);
    const st = await hub.status();
    return { hub, fuzzVolumes: st.volumes.map((v: any) => v.name).filter((n: string) => /^FZ\d+$/.test(n)) };
  }
  const fuzzVolumes = Array.from({ length: o.fuzzVolumes ?? Math.min(4, o.conns) }, (_, i) => `FZ${i + 1}`);
  const vols = [goodVolume, ...fuzzVolumes].flatMap((n) => ['--vol', `${n}=${path.join(dir, `${n}R`)}`]);
  const hub = new HubProcess([...vols, '--data', path.join(dir, 'state')], {
    logFile: path.join(dir, 'hub.log'),
    statusTimeoutMs: 5000,
    startTimeoutMs: 20_000,
  });
  await hub.start();
  return { hub, fuzzVolumes };
}

/** The good agent's image: random data in half of its 64 KiB blocks, from the campaign's seed. */
function makeGoodImage(file: string, size: number, rng: Rng): void {
  const fd = fs.openSync(file, 'w');
  fs.ftruncateSync(fd, size);
  for (let off = 0; off < size; off += 64 * 1024) {
    if (rng.chance(0.5))
      fs.writeSync(fd, rng.bytes(Math.min(64 * 1024, size - off)), 0, Math.min(64 * 1024, size - off), off);
  }
  fs.closeSync(fd);
}

/** Until the hub says the good agent's VM protects the volume and the agent has its volume id. */
async function waitProtected(
  hub: HubProcess,
  agent: ReplicationAgent,
  goodVolume: string,
  goodVm: string,
  crashed: () => boolean,
) {
  const until = Date.now() + 60_000;
  for (;;) {
    const v = await hub.volume(goodVolume).catch(() => null);
    if (v && v.vm === goodVm && v.state === 'protecting' && agent.status().volumes[0].volumeId >= 0) return;
    if (Date.now() > until || crashed())
      throw new Error(`good agent did not get ${goodVolume} protected: ${JSON.stringify(v)}`);
    await sleep(50);
  }
}

/** The good agent's load: 4 KiB-aligned writes of 1-16 blocks, a flush every 64, until stopped. */
function startGoodWriter(agent: ReplicationAgent, volume: string, size: number, rng: Rng, res: CampaignResult) {
  const state = { writing: true, done: Promise.resolve() };
  state.done = (async () => {
    const blocks = size / 4096;
    while (state.writing) {
      const n = rng.between(1, 16);
      const off = rng.int(blocks - n + 1) * 4096;
      await agent.write(volume, off, rng.bytes(n * 4096));
      res.good.writes++;
      if (res.good.writes % 64 === 0) await agent.flush(volume);
      await sleep(rng.int(4));
    }
  })();
  return state;
}

/** After the workers: no fuzz session left on the hub, and every fuzz volume claimable again. */
async function checkHubReleased(run: FuzzRun, goodVm: string): Promise<void> {
  const { hub, res } = run;
  const until = Date.now() + 10_000;
  for (;;) {
    const agents: any[] = (await hub.status().catch(() => ({ agents: [] }))).agents;
    if (agents.length === 1 && agents[0].vm === goodVm) break;
    if (Date.now() > until) {
      res.lingering = agents.filter((a) => a.vm !== goodVm).length;
      run.fail(
        `hub still holds ${res.lingering} fuzz session(s) after the campaign: ${JSON.stringify(agents.map((a) => a.vm))}`,
      );
      break;
    }
    await sleep(100);
  }
  for (const name of run.ctx.fuzzVolumes) {
    const peer = new Peer(hub.host, hub.port);
    if (!(await peer.ok)) {
      run.crashed();
      break;
    }
    await peer.write(encodeReportVmVolumes([{ name, sizeBytes: FUZZ_VOLUME_BYTES }]));
    const ok = await peer.until(
      () => peer.msgs.some((x) => x.cmd === Cmd.START_PROTECT && x.name === name),
      run.hangMs,
    );
    if (!ok)
      run.fail(
        `${name} cannot be claimed after the campaign (owner leaked?): ${peer.msgs.map((x) => Cmd[x.cmd]).join(',')}`,
      );
    await peer.write(encodeAgentShutdown());
    peer.fin();
    await peer.until(() => peer.closed, run.hangMs);
    peer.destroy();
  }
}

/** The good agent converged: nothing pending or dirty on either side, and the volume byte-equal. */
async function checkGoodConverged(
  run: FuzzRun,
  agent: ReplicationAgent,
  img: string,
  recovery: string,
  goodVm: string,
) {
  const { hub, res, o } = run;
  const goodVolume = run.ctx.goodVolume;
  const until = Date.now() + (o.convergeMs ?? 60_000);
  let last: string;
  for (;;) {
    const a = agent.status(),
      v = await hub.volume(goodVolume).catch(() => null);
    last =
      `agent connected=${a.connected} pending=${a.pendingWrites} dirty=${a.volumes[0].dirtyBytes}; ` +
      `hub ${goodVolume} state=${v?.state} vm=${v?.vm} dirtyBytes=${v?.dirtyBytes}`;
    const agentClean = a.connected && a.pendingWrites === 0 && a.volumes[0].dirtyBytes === 0;
    if (agentClean && v && v.state === 'protecting' && v.dirtyBytes === 0 && v.vm === goodVm) {
      const [x, y] = [sha(img), sha(recovery)];
      if (x === y) {
        res.good = {
          ...res.good,
          converged: true,
          detail: `${goodVolume} protecting, dirtyBytes 0, sha256 ${x.slice(0, 16)}… on both sides`,
        };
        return;
      }
      last += `; sha ${x.slice(0, 12)} != ${y.slice(0, 12)}`;
    }
    if (Date.now() > until || run.crashed()) {
      res.good.detail = last;
      run.fail(`good session did not converge: ${last}`);
      return;
    }
    await sleep(200);
  }
}

/**
 * Peak memory against its bound, a last crash check, the spawned hub stopped, the directory
 * removed if all went well.
 */
async function finish(o: CampaignOptions, run: FuzzRun, dir: string, t0: number): Promise<void> {
  const { hub, res } = run;
  const m = hub.mem();
  if (m) res.maxRssMiB = Math.max(res.maxRssMiB, m.hwm, m.rss);
  if (o.maxRssMiB && res.maxRssMiB > o.maxRssMiB) {
    run.fail(`hub peak RSS ${res.maxRssMiB.toFixed(1)} MiB over the bound of ${o.maxRssMiB} MiB`);
  }
  run.crashed();
  if (!o.hub) await hub.stop();
  res.durationMs = Date.now() - t0;
  if (!o.keep && res.failures.length === 0) {
    fs.rmSync(dir, { recursive: true, force: true });
    if (!o.hub) res.hubLog += ' (removed; --keep keeps it)';
  }
}

export async function runCampaign(o: CampaignOptions): Promise<CampaignResult> {
  const t0 = Date.now();
  const log = o.log ?? (() => undefined);
  const root = new Rng(o.seed);
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'rephub-fuzz-'));
  const goodVolume = o.goodVolume ?? 'V1';
  const goodVm = `fuzz-good-vm-${o.seed}`;
  const res = emptyResult(dir);
  const { hub, fuzzVolumes } = await hubUnderTest(o, dir, goodVolume);
  res.hubLog = hub.logFile;
  log(`fuzz: hub ${hub.host}:${hub.port} (pid ${hub.pid ?? '?'}), http ${hub.http}, dir ${dir}`);

  let dead = false;
  const crashed = () => {
    if (hub.exit && !dead) {
      dead = true;
      res.crashes = 1;
      fail(res, `hub process exited during the campaign: ${JSON.stringify(hub.exit)}\n${hub.logTail()}`);
    }
    return dead;
  };
  const sampler = setInterval(() => {
    const m = hub.mem();
    if (m) {
      res.rssSamples++;
      res.maxRssMiB = Math.max(res.maxRssMiB, m.rss);
    }
    crashed();
  }, 100);

  // --- the good agent ---
  const known = (await hub.status()).volumes.find((v: any) => v.name === goodVolume);
  if (!known) throw new Error(`the hub has no recovery volume ${goodVolume}`);
  const size = known.sizeBytes || (o.imageMiB ?? 64) * MiB;
  const img = path.join(dir, `${goodVolume}.img`);
  makeGoodImage(img, size, root.fork(1000));
  const agent = startTestAgent({ host: hub.host, port: hub.port, vm: goodVm, images: { [goodVolume]: img } });
  try {
    await waitProtected(hub, agent, goodVolume, goodVm, crashed);
  } catch (e) {
    clearInterval(sampler);
    await agent.stop(500);
    await hub.stop();
    throw e;
  }
  const goodVolumeId = agent.status().volumes[0].volumeId;
  const recovery: string = (await hub.volume(goodVolume)).recovery;
  log(
    `fuzz: good agent protects ${goodVolume} (${size / MiB} MiB, volume id ${goodVolumeId}); ` +
      `${o.conns} fuzz connections, ${o.frames} frames, seed ${o.seed}`,
  );
  const writer = startGoodWriter(agent, goodVolume, size, root.fork(2000), res);

  // --- workers ---
  const ctx: FuzzCtx = {
    goodVolume,
    goodVolumeId,
    goodVm,
    fuzzVolumes,
    fuzzVolumeBytes: FUZZ_VOLUME_BYTES,
    pool: root.fork(3000).bytes(2 * MiB),
  };
  const run = new FuzzRun(o, res, hub, ctx, size, crashed);
  const progress = setInterval(
    () =>
      log(
        `fuzz: ${run.frames} frames, ${res.sessions} sessions, ${res.closedWithError} closed ` +
          `with ERROR, rss ${hub.mem()?.rss.toFixed(0) ?? '?'} MiB, good writes ${res.good.writes}`,
      ),
    5000,
  );
  // Silent peers take ~3 heartbeat intervals each: they run beside the workers from the start.
  const silent = Array.from({ length: o.silentPeers ?? 2 }, (_, i) =>
    silentSession(run, root.fork(500 + i)).catch((e) => run.fail(`silent: fuzzer error: ${(e as Error).stack}`)),
  );
  await Promise.all(Array.from({ length: o.conns }, (_, i) => worker(run, i, root.fork(i))));
  await Promise.all(silent);
  clearInterval(progress);
  res.frames = run.frames;
  res.bigFrames = run.budget.bigSent;

  // --- the end: no fuzz session left on the hub, fuzz volumes claimable, good volume converged ---
  writer.writing = false;
  await writer.done.catch((e) => run.fail(`good agent write failed: ${(e as Error).message}`));
  if (!crashed()) await checkHubReleased(run, goodVm);
  res.good.connects = agent.stats.connects;
  if (!crashed()) await checkGoodConverged(run, agent, img, recovery, goodVm);
  await agent.stop(2000);
  clearInterval(sampler);
  await finish(o, run, dir, t0);
  return res;
}
