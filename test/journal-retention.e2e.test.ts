// A full journal drops its oldest points and never blocks replication, with real hub and agent
// processes: a hub with a 4 MiB journal cap takes 24 MiB of guest writes (qemu-io through the
// agent's NBD export, a flush after each MiB, so 24 points). Every round's writes are acked
// while the journal overflows, the replica converges byte-equal, and the journal says what it
// dropped in /status (drops, the oldest point's age), /metrics and the log; the newest point
// (the present) restores byte-exact.
import { strict as assert } from 'node:assert';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { execFileSync } from 'node:child_process';
import { sha, waitFor } from './harness/util';
import { CLI } from './harness/hub-process';
import { startProtectedPair, ProtectedPair } from './harness/pair';

const MiB = 1 << 20;

function rephub(pair: ProtectedPair, ...args: string[]): string {
  return execFileSync(process.execPath, [CLI, ...args, '--hub', `http://${pair.hub.http}`], {
    encoding: 'utf8',
    timeout: 60_000,
    env: { ...process.env, REPHUB_ADMIN_TOKEN_FILE: pair.hub.adminTokenFile },
  });
}

describe('journal: full drops the oldest, never blocks replication (e2e)', function () {
  this.timeout(180_000);
  let pair: ProtectedPair | undefined;

  afterEach(async () => {
    await pair?.agent.stop();
    await pair?.hub.stop();
    pair = undefined;
  });

  it('keeps replicating through 6x its size cap, drops the oldest points, and says so', async () => {
    pair = await startProtectedPair(32 * MiB, ['--journal-size', '4M']);
    const p = pair;
    for (let i = 0; i < 24; i++) {
      const pat = 0x30 + i;
      execFileSync(
        'qemu-io',
        ['-f', 'raw', '-c', `write -P ${pat} ${(i % 30) * MiB} 1M`, '-c', 'flush', p.agent.uri('V1')],
        { timeout: 60_000 },
      );
      await waitFor(`round ${i} acked by the hub`, () => p.agent.clean(), 30_000);
    }
    await p.hub.converged('V1', p.img, p.rep, 60_000);
    const j = await waitFor('retention ran', async () => {
      const x = (await p.hub.status()).journals.find((s: any) => s.vm === 'vm1');
      return x && x.drops > 0 && x.bytes <= 4 * MiB ? x : undefined;
    });
    assert.ok(j.points >= 1, 'the newest points stay');
    assert.equal(typeof j.oldestPointAgeMs, 'number');
    assert.ok(j.oldestPointAgeMs >= 0);
    const metrics = await (await fetch(`http://${p.hub.http}/metrics`)).text();
    assert.match(metrics, /rephub_journal_dropped_points_total\{vm="vm1"\} [1-9]/);
    assert.match(metrics, /rephub_journal_oldest_point_age_seconds\{vm="vm1"\} \d/);
    assert.match(metrics, /rephub_journal_bytes\{vm="vm1"\} \d/);
    assert.match(p.hub.stderr, /journal retention dropped the oldest points/);

    const human = rephub(p, 'status');
    assert.match(human, /journal vm1: \d+ checkpoints, oldest [\d.]+m?s ago, [\d.]+\w+, [1-9]\d* dropped/);
    const pts = JSON.parse(rephub(p, 'checkpoints', '--vm', 'vm1', '--json'))[0].checkpoints;
    assert.ok(pts.length < 24, `${pts.length} points kept of 24`);
    const out = path.join(p.dir, 'latest.img');
    rephub(p, 'restore', '--vm', 'vm1', '--volume', 'V1', '--at', 'latest', '--to', out);
    assert.equal(sha(out), sha(p.img), 'the newest point is the present');
    assert.ok(fs.statSync(out).size === 32 * MiB);
  });
});
