// A hub hiccup under small writes (issue 17's half-speed rounds, BENCHMARKS Round 22): real hub and
// agent processes, fio's random 4 KiB writes at depth 16 through the agent's NBD export, and the
// hub stopped (SIGSTOP) for 300 ms mid-job, under the stall window (500 ms at --max-lag 500).
// Before the queue hold, the writes filled the link's queue in that time and the rest were owed as
// whole 64 KiB regions, whose read-backs kept the hub behind for the rest of the job. Now the
// agent holds write replies once half the queue waits (lag-bound.ts): nothing is owed, replies
// were held for the queue, and the copies end byte-equal. The queue is 4 MiB here so that even a
// slow machine fills it during the stop: 2 MiB of 4 KiB writes plus the socket buffers. And
// `rephub-agent status` and /metrics say so.
import { strict as assert } from 'node:assert';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { tmpdir, makeImage, MiB, sleep } from './harness/util';
import { HubProcess, v1Hub } from './harness/hub-process';
import { spawnSync } from 'node:child_process';
import { AgentProcess, v1Agent, AGENT_CLI } from './harness/agent-process';
import { waitHubConverged, waitByteEqual, fmtRegions, fioOnce } from './harness/fault-harness';
import { killWriters } from './harness/fio';

const SIZE = 64 * MiB;
const STOP_MS = 300;

describe('queue hold: the hub stops 300 ms under 4 KiB writes at depth 16', function () {
  this.timeout(300_000);
  let dir: string, hub: HubProcess | undefined, agent: AgentProcess | undefined;
  const say = (s: string) => process.stdout.write(`      ${s}\n`);

  beforeEach(() => {
    dir = tmpdir('rephub-queue-hold-');
  });

  afterEach(async () => {
    killWriters();
    try {
      if (hub?.pid) process.kill(hub.pid, 'SIGCONT'); // a test that failed while it was stopped
    } catch {
      // the hub is gone already: nothing to resume, the rest of the cleanup still runs
    }
    await agent?.stop();
    await hub?.stop();
    agent = hub = undefined;
    fs.rmSync(dir, { recursive: true, force: true });
  });

  it('holds write replies once half the link queue waits: nothing is owed, copies byte-equal', async () => {
    const img = path.join(dir, 'V1.img'),
      rep = path.join(dir, 'V1R');
    makeImage(img, SIZE, 0);
    hub = v1Hub(dir, rep);
    await hub.start();
    agent = v1Agent(dir, img, hub.port, '--max-queue', '4M');
    await agent.start();
    await waitHubConverged(hub, agent, 120_000);
    const before = await agent.status();

    const fio = fioOnce(agent.uri('V1'), [
      '--rw=randwrite',
      '--bs=4k',
      '--iodepth=16',
      `--size=${SIZE}`,
      '--time_based',
      '--runtime=3',
      '--buffer_pattern=0x3c',
    ]);
    await sleep(1000);
    const pid = hub.pid!;
    process.kill(pid, 'SIGSTOP');
    await sleep(STOP_MS);
    process.kill(pid, 'SIGCONT');
    const run = await fio.done;
    assert.equal(run.code, 0, `fio failed: ${run.stderr}`);

    const st = await agent.status(),
      lb = st.lagBound;
    say(
      `fio ${run.ios} writes; owed ${st.overflowWrites - before.overflowWrites}; queue holds ${lb.queueHolds}, ` +
        `replies held ${lb.heldWrites}, capped ${lb.cappedWrites}, stalls ${lb.stalls}, longest wait ${lb.maxWaitMs} ms`,
    );
    assert.equal(lb.queueHoldBytes, 2 * MiB, 'half of --max-queue 4M');
    assert.equal(lb.stalls, 0, `the ${STOP_MS} ms stop looked like a stalled link (nothing heard for ${500} ms)`);
    assert.ok(lb.queueHolds > 0 && lb.heldWrites > 0, 'replies were held for the queue');
    assert.equal(st.overflowWrites - before.overflowWrites, 0, 'no write was owed: the guest waited instead');
    const cli = spawnSync(process.execPath, [AGENT_CLI, 'status', '--agent', `http://127.0.0.1:${agent.httpPort}`]);
    assert.match(cli.stdout.toString(), /held \d+ times for the send queue \(over 2\.0MiB\)/, 'the operator sees it');
    const metrics = await (await fetch(`http://127.0.0.1:${agent.httpPort}/metrics`)).text();
    const holds = /^rephub_agent_queue_holds_total\{vm="[^"]+"\} (\d+)$/m.exec(metrics);
    assert.equal(Number(holds?.[1]), lb.queueHolds, 'and Prometheus');
    const d = await waitByteEqual(img, rep, SIZE, 60_000);
    assert.ok(d.equal, `copies differ: ${fmtRegions(d)}`);
  });
});
