// A hub process whose journal was open across a (faked) reboot: real hub and agent processes,
// qemu-io writing and flushing through the agent's NBD export to make checkpoints, a hub kill -9,
// then a restart under another boot id (REPHUB_BOOT_ID_FILE stands in for the kernel's). Every
// point is dropped, loudly: an error in the log, journals[].powerLoss in /status, a metric; and
// the journal starts afresh with the next flush, which restores byte-exact.
import { strict as assert } from 'node:assert';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { execFileSync } from 'node:child_process';
import { sha, waitFor } from './harness/util';
import { startProtectedPair, ProtectedPair, rephub, points } from './harness/pair';

const MiB = 1 << 20;

async function writeAndFlush(p: ProtectedPair, pattern: number): Promise<void> {
  execFileSync(
    'qemu-io',
    ['-f', 'raw', '-c', `write -P ${pattern} ${pattern * MiB} 256k`, '-c', 'flush', p.agent.uri('V1')],
    {
      timeout: 60_000,
    },
  );
  await waitFor('agent clean', () => p.agent.clean());
}

describe('journal: a power loss is never silent (e2e)', function () {
  this.timeout(180_000);
  let pair: ProtectedPair | undefined;

  afterEach(async () => {
    delete process.env.REPHUB_BOOT_ID_FILE;
    await pair?.agent.stop();
    await pair?.hub.stop();
    pair = undefined;
  });

  it('drops every point after an unclean stop under another boot, says so, and starts afresh', async () => {
    pair = await startProtectedPair(16 * MiB);
    const p = pair;
    for (let i = 1; i <= 3; i++) await writeAndFlush(p, i);
    await waitFor('three flush points', () => points(p).length >= 3);
    const before = points(p).map((c) => c.id);

    await p.hub.kill9();
    const bootFile = path.join(p.dir, 'boot_id');
    fs.writeFileSync(bootFile, 'another-boot-after-the-power-cut\n');
    process.env.REPHUB_BOOT_ID_FILE = bootFile; // the restarted hub sees another boot
    await p.hub.start();
    await waitFor('the journal reopened', async () => (await p.hub.status()).journals?.length > 0);

    const st = await p.hub.status();
    const j = st.journals.find((x: any) => x.vm === 'vm1');
    assert.equal(j.points, 0, 'no point survives');
    assert.equal(j.powerLoss.droppedPoints, before.length);
    assert.match(j.powerLoss.message, /cannot be proven after a power loss/);
    const metrics = await (await fetch(`http://${p.hub.http}/metrics`)).text();
    assert.match(metrics, /rephub_journal_power_loss\{vm="vm1"\} 1/);
    assert.match(metrics, new RegExp(`rephub_journal_power_loss_dropped_points\\{vm="vm1"\\} ${before.length}`));
    assert.match(p.hub.stderr, /points cannot be proven after a power loss/);
    assert.match(rephub(p, 'status'), /journal vm1: 0 checkpoints.*JOURNAL POWER LOSS.*cannot be proven/);
    assert.throws(() =>
      rephub(p, 'restore', '--vm', 'vm1', '--volume', 'V1', '--at', String(before[0]), '--to', '/dev/null'),
    );

    // the agent reconnects; the next flush is a new point, restorable byte-exact
    await p.hub.converged('V1', p.img, p.rep, 60_000);
    await writeAndFlush(p, 5);
    const cp = await waitFor('a new point', () => points(p).find((c) => c.id > before[before.length - 1]));
    const copy = path.join(p.dir, 'copy.img'),
      out = path.join(p.dir, 'restored.img');
    fs.copyFileSync(p.img, copy);
    await waitFor('the newest point settles', () => points(p)[points(p).length - 1].id === cp.id);
    rephub(p, 'restore', '--vm', 'vm1', '--volume', 'V1', '--at', String(cp.id), '--to', out);
    assert.equal(sha(out), sha(copy));
  });
});
