// The hub with --cache none end to end (real hub and agent processes, fio through the agent's NBD
// export): 1 MiB writes land with O_DIRECT, several in flight (storage/volume.ts), while 4 KiB
// writes hit the same megabytes; the replica ends byte-equal, and the journal's before-images,
// read while direct writes were in flight over them, restore a checkpoint byte-exact.
import { strict as assert } from 'node:assert';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { execFileSync } from 'node:child_process';
import { sha, waitFor } from './harness/util';
import { startProtectedPair, ProtectedPair, rephub, points } from './harness/pair';

const MiB = 1 << 20;
const SIZE = 32 * MiB;

/** 1 MiB writes at depth 8 and 4 KiB writes at depth 4 over the same 16 MiB, then a flush. */
function mixedWrites(uri: string, seed: number): void {
  const common = ['--ioengine=nbd', `--uri=${uri}`, '--size=16m', '--rw=randwrite', `--randseed=${seed}`];
  execFileSync(
    'fio',
    [
      '--name=big',
      ...common,
      '--bs=1m',
      '--iodepth=8',
      '--number_ios=96',
      '--end_fsync=1',
      '--name=small',
      ...common,
      '--bs=4k',
      '--iodepth=4',
      '--number_ios=3000',
      '--end_fsync=1',
    ],
    { timeout: 120_000, stdio: ['ignore', 'pipe', 'pipe'] },
  );
}

describe('hub --cache none: O_DIRECT writes in flight (e2e)', function () {
  this.timeout(300_000);
  let pair: ProtectedPair | undefined;

  afterEach(async () => {
    await pair?.agent.stop();
    await pair?.hub.stop();
    if (pair) fs.rmSync(pair.dir, { recursive: true, force: true });
    pair = undefined;
  });

  it('the initial sync lands with O_DIRECT too: its read answers are received aligned', async () => {
    pair = await startProtectedPair(SIZE, ['--cache', 'none'], 1); // every block data: whole 1 MiB answers
    const v = await pair.hub.volume('V1');
    assert.equal(sha(pair.rep), sha(pair.img));
    // Each REMOTE_IO_RES's data is placed on a 4 KiB boundary as it is received (protocol
    // dataOffset); unaligned, every sync write would go through the page cache (0 direct bytes).
    assert.ok(v.bytesDirect >= SIZE - 2 * MiB, `O_DIRECT bytes of the ${SIZE}-byte sync: ${v.bytesDirect}`);
  });

  it('overlapping 1 MiB and 4 KiB writes end byte-equal; a checkpoint taken among them restores byte-exact', async () => {
    pair = await startProtectedPair(SIZE, ['--cache', 'none']);
    const p = pair;
    const before = await p.hub.volume('V1');
    mixedWrites(p.agent.uri('V1'), 1);
    await p.hub.converged('V1', p.img, p.rep, 120_000);
    await waitFor('agent clean', () => p.agent.clean());
    // A tagged point once round 1 is applied (the guest's flush points race the interval point:
    // a flush after an interval point with nothing captured between makes none).
    const id = Number(rephub(p, 'checkpoint', '--vm', 'vm1', '--label', 'round 1').split('\t')[0]);
    assert.ok(
      points(p).some((c) => c.id === id),
      `checkpoint ${id} listed: ${JSON.stringify(points(p))}`,
    );
    const copy = path.join(p.dir, 'copy.img');
    fs.copyFileSync(p.img, copy); // nothing writes meanwhile: the image as of that checkpoint

    mixedWrites(p.agent.uri('V1'), 2); // over the same megabytes: every block captured again
    await p.hub.converged('V1', p.img, p.rep, 120_000);
    const after = await p.hub.volume('V1');
    assert.ok(after.bytesDirect - before.bytesDirect >= 8 * MiB, `O_DIRECT bytes: ${after.bytesDirect}`);
    assert.notEqual(sha(p.img), sha(copy), 'the second round changed the image');

    const out = path.join(p.dir, 'restored.img');
    rephub(p, 'restore', '--vm', 'vm1', '--volume', 'V1', '--at', String(id), '--to', out);
    assert.equal(sha(out), sha(copy), `checkpoint ${id} restores byte-exact`);
  });
});
