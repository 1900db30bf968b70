// Bandwidth control end to end (issue 18), real hub and agent processes, fio writing through the
// agent's NBD export, the fault proxy as the link:
// - a link capped at 5 MiB/s while a 64 MiB initial sync runs: the RPO lag of mirrored writes
//   (the agent's ack lag, link queue included, and the hub's own) stays under 2 s, and the sync
//   still completes byte-equal. Without the resync governor the hub's 16 reads of 1 MiB in
//   flight alone queue about 3 s of answers ahead of every write on such a link;
// - --max-rate caps the bytes the agent sends (counted by the proxy), the caps show in /status
//   and /metrics;
// - a cap that is a typo is refused at start, naming the flag.
import { strict as assert } from 'node:assert';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { spawnSync } from 'node:child_process';
import { tmpdir, makeImage, MiB, sleep } from './harness/util';
import { HubProcess, v1Hub } from './harness/hub-process';
import { AgentProcess, AGENT_CLI, v1Agent } from './harness/agent-process';
import { FaultProxy } from './harness/fault-proxy';
import { waitHubConverged, waitByteEqual, fmtRegions, fioOnce } from './harness/fault-harness';
import { killWriters } from './harness/fio';

const LAG_BOUND_MS = 2000; // the bound on the RPO lag of mirrored writes during a resync

describe('bandwidth control (fault proxy as a capped link, fio through the agent)', function () {
  this.timeout(600_000);
  let dir: string, hub: HubProcess | undefined, agent: AgentProcess | undefined, proxy: FaultProxy | undefined;
  const say = (s: string) => process.stdout.write(`      ${s}\n`);

  beforeEach(() => {
    dir = tmpdir('rephub-bandwidth-');
  });

  afterEach(async () => {
    killWriters();
    await agent?.stop();
    await proxy?.close();
    await hub?.stop();
    agent = proxy = hub = undefined;
    fs.rmSync(dir, { recursive: true, force: true });
  });

  /** A hub, the proxy in front of it, an agent of a `size` image full of data through the proxy. */
  async function start(size: number, rate: number, hubArgs: string[], agentArgs: string[]) {
    const img = path.join(dir, 'V1.img'),
      rep = path.join(dir, 'V1R');
    makeImage(img, size, 1);
    hub = v1Hub(dir, rep, ...hubArgs);
    await hub.start();
    proxy = new FaultProxy({ target: { host: '127.0.0.1', port: hub.port }, rateBytesPerSec: rate });
    agent = v1Agent(dir, img, await proxy.listen(), ...agentArgs);
    await agent.start();
    return { img, rep };
  }

  /** fio random 4 KiB writes through the agent at `rate`, until killed. */
  function writer(rate: string) {
    return fioOnce(agent!.uri('V1'), [
      '--rw=randwrite',
      '--bs=4k',
      '--iodepth=4',
      `--rate=${rate}`,
      '--time_based',
      '--runtime=300',
      '--randrepeat=0',
    ]);
  }

  it('keeps the RPO lag of mirrored writes under 2 s while an initial sync fills a 5 MiB/s link', async () => {
    const size = 64 * MiB;
    const { img, rep } = await start(size, 5 * MiB, [], []);
    const w = writer('256k');
    const lags: { agent: number; hub: number }[] = [];
    let syncing = 0,
      state: string | undefined;
    const t0 = Date.now();
    for (;;) {
      const [a, h] = await Promise.all([agent!.status(), hub!.status()]);
      const v = h.volumes.find((x: any) => x.name === 'V1'),
        s = h.agents[0];
      state = v?.state;
      if (s && state === 'syncing') {
        syncing++;
        lags.push({ agent: a.ackLagMs, hub: s.rpoLagMs });
      }
      if (state === 'protecting' || Date.now() - t0 > 300_000) break;
      await sleep(200);
    }
    w.proc.kill('SIGKILL');
    await w.done;
    const maxAgent = Math.max(...lags.map((l) => l.agent)),
      maxHub = Math.max(...lags.map((l) => l.hub));
    const a = await agent!.status();
    say(
      `initial sync of ${size / MiB} MiB on a 5 MiB/s link in ${((Date.now() - t0) / 1000).toFixed(1)} s, ` +
        `${syncing} samples while syncing: ack lag max ${maxAgent} ms, hub lag max ${maxHub} ms; ` +
        `governor ${JSON.stringify(a.resync)}`,
    );
    assert.equal(state, 'protecting', 'the initial sync completed under the writes');
    assert.ok(syncing >= 10, `sampled the lag while the sync ran (${syncing} samples)`);
    assert.ok(
      lags.every((l) => typeof l.agent === 'number' && typeof l.hub === 'number'),
      'both lags reported',
    );
    assert.ok(maxAgent < LAG_BOUND_MS, `ack lag of mirrored writes stayed under 2 s (max ${maxAgent} ms)`);
    assert.ok(maxHub < LAG_BOUND_MS, `the hub's RPO lag stayed under 2 s (max ${maxHub} ms)`);
    assert.ok(a.resync.sentBytes > size / 2, 'resync answers went through the governor');
    await waitHubConverged(hub!, agent!, 120_000);
    const d = await waitByteEqual(img, rep, size);
    assert.ok(d.equal, `byte-equal after the sync: ${fmtRegions(d)}`);
  });

  it('--max-rate caps what the agent sends; the caps show in /status and /metrics', async () => {
    const size = 32 * MiB,
      cap = 4 * MiB;
    const { img, rep } = await start(size, 0, ['--max-resync-rate', '64M'], ['--max-rate', '4M']);
    const t0 = Date.now();
    const w = writer('512k');
    await waitHubConverged(hub!, agent!, 180_000);
    w.proc.kill('SIGKILL');
    await w.done;
    const secs = (Date.now() - t0) / 1000,
      up = proxy!.stats.bytesUp;
    const a = await agent!.status(),
      h = await hub!.status();
    say(
      `${(up / MiB).toFixed(1)} MiB sent in ${secs.toFixed(1)} s (${(up / MiB / secs).toFixed(2)} MiB/s, cap 4 MiB/s); ` +
        `pacer ${JSON.stringify(a.bandwidth)}`,
    );
    // Generous: the cap's burst, and the writes fio had in flight when the clock was read.
    assert.ok(up <= cap * secs * 1.15 + 2 * MiB, `sent ${up} bytes in ${secs} s: over the 4 MiB/s cap`);
    assert.ok(up >= size / 2, 'the sync crossed the link');
    assert.equal(a.bandwidth.maxRateBytesPerSec, cap);
    assert.equal(a.bandwidth.resyncShare, 0.3);
    assert.ok(a.bandwidth.sentResyncBytes > 0 && a.bandwidth.sentBytes > a.bandwidth.sentResyncBytes);
    assert.equal(h.bandwidth.maxResyncRateBytesPerSec, 64 * MiB);
    assert.equal(h.agents[0].resync.maxRateBytesPerSec, 64 * MiB);
    const metrics = await (await fetch(`http://${hub!.http}/metrics`)).text();
    assert.match(metrics, new RegExp(`^rephub_resync_max_rate_bytes ${64 * MiB}$`, 'm'));
    assert.match(metrics, /^rephub_resync_rate_bytes\{vm="vm1"\} \d+$/m);
    const d = await waitByteEqual(img, rep, size);
    assert.ok(d.equal, `byte-equal: ${fmtRegions(d)}`);
  });

  it('refuses a cap that is a typo, naming the flag', () => {
    const r = spawnSync(process.execPath, [AGENT_CLI, '--export', 'V1=/nonexistent', '--max-rate', '10K'], {
      encoding: 'utf8',
    });
    assert.equal(r.status, 2);
    assert.match(r.stderr, /--max-rate: 10K is below 64K bytes\/s/);
    const s = spawnSync(process.execPath, [AGENT_CLI, '--export', 'V1=/x', '--resync-share', '130'], {
      encoding: 'utf8',
    });
    assert.equal(s.status, 2);
    assert.match(s.stderr, /--resync-share: expected a percentage 0\.\.100/);
  });
});
