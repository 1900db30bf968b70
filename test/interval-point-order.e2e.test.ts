// Every journal point is a state the guest had, interval points too (SPEC.md 7.4). A guest
// zeroing reaches the hub only as an owed region, by a DIRTY_REPORT the agent sends up to 10 ms
// later; the write the guest makes after the zeroing completed goes at once. A hub that takes an
// interval point at its own place in the stream can land between the two: the point holds the
// later write but not the zeroing before it. Real hub (--checkpoint-interval 1s, the least) and
// agent; qemu-io repeats, for i = 1..N: C := i, A := 0xaa, zero A, B := i. Every point, read
// through the journal's view after the hub stopped, is a guest state: where B = C, A is zero.
import { strict as assert } from 'node:assert';
import * as path from 'node:path';
import { execFileSync } from 'node:child_process';
import { tmpdir, makeImage, MiB } from './harness/util';
import { HubProcess, v1Hub } from './harness/hub-process';
import { AgentProcess, v1Agent } from './harness/agent-process';
import { Journal } from '../storage/journal';
import { JournalView } from '../storage/journal-view';
import { FileVolume } from '../storage/volume';

const SIZE = 16 * MiB;
const N = 600;
const A = 0, // zeroed each round, over 0xaa: owed to the hub by report
  B = 4 * MiB, // the round's number, after the zeroing
  C = 8 * MiB; // the round's number, before A is filled
const round = (i: number) => (i % 255) + 1;

describe('interval points and owed regions (real hub and agent, qemu-io)', function () {
  this.timeout(180_000);
  let hub: HubProcess | undefined, agent: AgentProcess | undefined;

  afterEach(async () => {
    await agent?.stop();
    await hub?.stop();
  });

  it('no journal point holds a write without the zeroing the guest completed before it', async () => {
    const dir = tmpdir('rephub-interval-order-');
    const img = path.join(dir, 'V1.img'),
      rep = path.join(dir, 'V1R');
    makeImage(img, SIZE, 0);
    const qio = (...cmds: string[]) =>
      execFileSync('qemu-io', ['-f', 'raw', '-t', 'writeback', ...cmds.flatMap((c) => ['-c', c]), agent!.uri('V1')], {
        stdio: 'pipe',
      });
    hub = v1Hub(dir, rep, '--checkpoint-interval', '1s');
    await hub.start();
    agent = v1Agent(dir, img, hub.port);
    await agent.start();
    qio('flush');
    await hub.converged('V1', img, rep, 60_000);

    const cmds: string[] = [];
    for (let i = 1; i <= N; i++)
      cmds.push(
        `write -P ${round(i)} ${C} 4k`,
        `write -P 0xaa ${A} 64k`,
        `write -z ${A} 64k`,
        `write -P ${round(i)} ${B} 4k`,
        'sleep 10',
      );
    qio(...cmds, 'flush');
    await hub.converged('V1', img, rep, 60_000);
    await agent.stop();
    agent = undefined;
    await hub.stop();
    hub = undefined;

    const journal = Journal.open(path.join(dir, 'hub', 'journal', 'vm1'), { segmentBytes: 1 * MiB });
    const base = FileVolume.open(rep, { readOnly: true });
    const bad: string[] = [];
    const kinds: Record<string, number> = {};
    try {
      const vol = journal.volumeIndex('V1');
      for (const cp of journal.points()) {
        const view = new JournalView(base, journal, vol, cp);
        try {
          const a = Buffer.alloc(64 * 1024),
            b = Buffer.alloc(4096),
            c = Buffer.alloc(4096);
          await view.read(a, A);
          await view.read(b, B);
          await view.read(c, C);
          kinds[cp.kind] = (kinds[cp.kind] ?? 0) + 1;
          if (b[0] !== 0 && b[0] === c[0] && !a.every((x) => x === 0))
            bad.push(
              `point ${cp.id} (${cp.kind}): round ${b[0]} wrote B after zeroing A, but A holds 0x${a[0].toString(16)}`,
            );
        } finally {
          await view.close();
        }
      }
    } finally {
      await base.close();
      journal.close();
    }
    assert.ok((kinds.interval ?? 0) >= 2, `interval points taken while the guest wrote: ${JSON.stringify(kinds)}`);
    assert.deepEqual(
      bad.slice(0, 10),
      [],
      `${bad.length} points are no state the guest had (${JSON.stringify(kinds)})`,
    );
  });
});
