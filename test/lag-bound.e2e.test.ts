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
    const img = path.join(dir, 'V1.img'),
      rep = path.join(dir, 'V1R');
    makeImage(img, SIZE, 0);
    hub = v1Hub(dir, rep);
    await hub.start();
    proxy = new FaultProxy({ target: { host: '127.0.0.1', port: hub.port }, rateBytesPerSec: LINK });
    agent = v1Agent(dir, img, await proxy.listen(), '--max-lag', String(MAX_LAG_MS));
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
    const st = (await agent.status()).lagBound;
    const worst = samples.reduce((w, s) => (s.backlogBytes > w.backlogBytes ? s : w));
    say(
      `fio ${run.ios} MiB in 4 s; replies held ${st.heldWrites}, capped ${st.cappedWrites}, stalls ${st.stalls}, longest wait ${st.maxWaitMs} ms; ` +
        `drain ${(st.drainBytesPerSec / MiB).toFixed(1)} MiB/s, bound ${(st.boundBytes / MiB).toFixed(1)} MiB; ` +
        `worst sample backlog ${(worst.backlogBytes / MiB).toFixed(1)} / bound ${(worst.boundBytes / MiB).toFixed(1)} MiB; ` +
        `most past the bound at a write ${(st.maxOverBytes / MiB).toFixed(1)} MiB; copies equal ${equalAfterMs} ms after the last write`,
    );

    assert.equal(st.maxLagMs, MAX_LAG_MS);
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
  });
});
