// The backlog bound (--max-lag, issue 17: "copies byte-equal within 1 s of the last write, as the
// peers manage"), real hub and agent processes, fio's sequential 1 MiB writes through the agent's
// NBD export wrapping a volume over a link the fault proxy caps at 8 MiB/s. Without the bound
// the writes overflow into owed regions over the whole volume (64 MiB: 8 s of the link) and the
// copies wait for all of it after the job; with it, the agent holds write replies while the
// backlog (unacked + owed, unread) is over --max-lag of the drain, so the copies are equal about
// --max-lag after the last write. Asserted from the agent's /status sampled during the job: the
// backlog never went past the bound by more than the writes in flight and those let go by the
// wait cap, replies were held, and the copies were equal within a time derived from --max-lag
// (the bound's drain time, the writes in flight at the link's rate, the governor's ramp).
// The same with the agent's default flags (the bound is on by default). And a hub that makes
// writes durable only once a second (--commit-interval 1000): the bound drains on what the hub
// applied (WRITE_APPLIED, cap APPLIED), so write replies do not wait for its fdatasyncs.
import { strict as assert } from 'node:assert';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { tmpdir, makeImage, MiB, sleep } from './harness/util';
import { HubProcess, v1Hub } from './harness/hub-process';
import { AgentProcess, v1Agent } from './harness/agent-process';
import { FaultProxy } from './harness/fault-proxy';
import { waitHubConverged, waitByteEqual, fmtRegions, fioOnce } from './harness/fault-harness';
import { killWriters } from './harness/fio';

const LINK = 8 * MiB; // bytes/s each way
const SIZE = 64 * MiB;
const MAX_LAG_MS = 500;
const QD = 4,
  BS = MiB;

describe('backlog bound (--max-lag): 1 MiB writes wrapping a volume over an 8 MiB/s link', function () {
  this.timeout(600_000);
  let dir: string, hub: HubProcess | undefined, agent: AgentProcess | undefined, proxy: FaultProxy | undefined;
  const say = (s: string) => process.stdout.write(`      ${s}\n`);

  beforeEach(() => {
    dir = tmpdir('rephub-lag-bound-');
  });

  afterEach(async () => {
    killWriters();
    await agent?.stop();
    await proxy?.close();
    await hub?.stop();
    agent = proxy = hub = undefined;
    fs.rmSync(dir, { recursive: true, force: true });
  });

  it('holds write replies while the backlog is over --max-lag of the drain; copies equal about --max-lag after the last write', async () => {
    await burst(['--max-lag', String(MAX_LAG_MS)]);
  });

  it('does so with the default flags (--max-lag 500 by default): copies equal about 0.5 s after the last write', async () => {
    await burst([]);
  });

  async function burst(agentArgs: string[]): Promise<void> {
    const img = path.join(dir, 'V1.img'),
      rep = path.join(dir, 'V1R');
    makeImage(img, SIZE, 0);
    hub = v1Hub(dir, rep);
    await hub.start();
    proxy = new FaultProxy({ target: { host: '127.0.0.1', port: hub.port }, rateBytesPerSec: LINK });
    agent = v1Agent(dir, img, await proxy.listen(), ...agentArgs);
    await agent.start();
    await waitHubConverged(hub, agent, 120_000);

    // Sequential 1 MiB writes over the whole volume for 4 s: unbounded, fio writes it several
    // times over locally, and nearly all of it ends up owed.
    const fio = fioOnce(agent.uri('V1'), [
      '--rw=write',
      `--bs=${BS}`,
      `--iodepth=${QD}`,
      `--size=${SIZE}`,
      '--time_based',
      '--runtime=4',
      '--buffer_pattern=0x7e',
    ]);
    const samples: any[] = [];
    let running = true;
    const sampler = (async () => {
      while (running) {
        samples.push((await agent!.status()).lagBound);
        await sleep(50);
      }
    })();
    const run = await fio.done;
    running = false;
    await sampler;
    assert.equal(run.code, 0, `fio failed: ${run.stderr}`);
    const lastWrite = run.endedAt; // no later than the last write's reply

    const d = await waitByteEqual(img, rep, SIZE, 60_000);
    const equalAfterMs = Date.now() - lastWrite;
    assert.ok(d.equal, `copies differ: ${fmtRegions(d)}`);
    const full = await agent.status();
    const st = full.lagBound;
    const worst = samples.reduce((w, s) => (s.backlogBytes > w.backlogBytes ? s : w));
    say(
      `fio ${run.ios} MiB in 4 s; replies held ${st.heldWrites}, capped ${st.cappedWrites}, stalls ${st.stalls}, longest wait ${st.maxWaitMs} ms; ` +
        `drain ${(st.drainBytesPerSec / MiB).toFixed(1)} MiB/s, bound ${(st.boundBytes / MiB).toFixed(1)} MiB; ` +
        `worst sample backlog ${(worst.backlogBytes / MiB).toFixed(1)} / bound ${(worst.boundBytes / MiB).toFixed(1)} MiB; ` +
        `most past the bound at a write ${(st.maxOverBytes / MiB).toFixed(1)} MiB; copies equal ${equalAfterMs} ms after the last write; ` +
        `link base round trip ${full.resync.baseRttMs} ms`,
    );

    assert.equal(st.maxLagMs, MAX_LAG_MS);
    assert.equal(st.drainsOn, 'applied', 'the hub says what it applied (cap APPLIED)');
    assert.ok(st.heldWrites > 0, 'write replies were held (the backlog went over the bound)');
    // A link that looked stalled (nothing drained or heard for --max-lag) holds nothing by design
    // (lag-bound.ts), so the guest writes freely meanwhile and no limit follows. On a loaded
    // machine the hub's acks and PONGs queue behind several MiB of socket buffers on this 8 MiB/s
    // link (CI saw 2 stalls and 73 MiB past the bound): then only the above is asserted.
    if (st.stalls > 0) {
      say(`the link looked stalled ${st.stalls} time(s): the bound let go, its limits are not checked in this run`);
      return;
    }
    // Past the bound, a write adds to the backlog only when its reply was let go: under the bound
    // (then at most the QD writes in flight land at once) or by the wait cap (one more each).
    const allowed = (QD + st.cappedWrites) * BS + MiB;
    assert.ok(
      st.maxOverBytes <= allowed,
      `backlog past the bound by ${st.maxOverBytes} bytes at a write (allowed ${allowed})`,
    );
    // The same seen from outside, against the largest bound so far (it shrinks while the drain slows).
    let bound = 0;
    for (const s of samples) {
      bound = Math.max(bound, s.boundBytes);
      assert.ok(
        s.backlogBytes <= bound + allowed,
        `a sample's backlog ${s.backlogBytes} over the bound ${bound} by more than ${allowed}: ${JSON.stringify(s)}`,
      );
    }
    // After the last write the backlog is at most the bound (--max-lag of the drain, plus a round
    // trip) and the writes in flight; it drains at the measured rate (the link's, at most). The governor's ramp and
    // the comparison's own time get a second. Without the bound: the whole volume, 8 s of the link.
    const drain = Math.min(LINK, st.drainBytesPerSec || LINK); // slower when the machine is loaded
    const limitMs = 2 * MAX_LAG_MS + (allowed * 1000) / drain + 1000;
    assert.ok(equalAfterMs <= limitMs, `copies equal ${equalAfterMs} ms after the last write (bound ${limitMs} ms)`);
  }
});

describe('backlog bound (--max-lag): a hub that makes writes durable once a second', function () {
  this.timeout(600_000);
  const COMMIT_MS = 1000; // the hub's --commit-interval: its WRITE_ACKs come this far apart
  let dir: string, hub: HubProcess | undefined, agent: AgentProcess | undefined;
  const say = (s: string) => process.stdout.write(`      ${s}\n`);

  beforeEach(() => {
    dir = tmpdir('rephub-lag-applied-');
  });

  afterEach(async () => {
    killWriters();
    await agent?.stop();
    await hub?.stop();
    agent = hub = undefined;
    fs.rmSync(dir, { recursive: true, force: true });
  });

  it("drains on what the hub applied: write replies do not wait for the hub's fdatasyncs", async () => {
    const img = path.join(dir, 'V1.img'),
      rep = path.join(dir, 'V1R');
    makeImage(img, SIZE, 0);
    hub = v1Hub(dir, rep, '--commit-interval', String(COMMIT_MS));
    await hub.start();
    agent = v1Agent(dir, img, hub.port, '--max-lag', String(MAX_LAG_MS));
    await agent.start();
    await waitHubConverged(hub, agent, 120_000);

    // 1 MiB writes, half the volume, as fast as the loopback link and the hub take them. Drained
    // on durable acks (the base's bound) the backlog passes 2 MiB before the first ack and the
    // replies wait for it, up to the commit interval; drained on applies, only while the hub
    // itself is behind.
    const run = await fioOnce(agent.uri('V1'), [
      '--rw=write',
      `--bs=${BS}`,
      `--iodepth=${QD}`,
      `--size=${SIZE / 2}`,
      '--buffer_pattern=0x5a',
    ]).done;
    assert.equal(run.code, 0, `fio failed: ${run.stderr}`);
    const st = (await agent.status()).lagBound;
    say(
      `fio ${run.ios} MiB in ${run.endedAt - run.startedAt} ms; replies held ${st.heldWrites}, capped ${st.cappedWrites}, ` +
        `longest wait ${st.maxWaitMs} ms; drain ${(st.drainBytesPerSec / MiB).toFixed(0)} MiB/s on ${st.drainsOn}`,
    );
    assert.equal(st.drainsOn, 'applied');
    assert.equal(st.cappedWrites, 0, 'no reply waited out the cap');
    assert.ok(st.maxWaitMs < COMMIT_MS / 2, `a reply waited ${st.maxWaitMs} ms: for the hub's fdatasync`);
    const d = await waitByteEqual(img, rep, SIZE, 60_000);
    assert.ok(d.equal, `copies differ: ${fmtRegions(d)}`);
  });
});
