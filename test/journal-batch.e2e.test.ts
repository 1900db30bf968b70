// The journal under a guest's small writes at depth 16, end to end: real hub and agent
// processes, fio writing 512 B..16 KiB random writes over a 512 KiB range (data and holes) through
// the agent's NBD export, so that the hub receives several writes per socket read, often
// overlapping, and applies them together (src/hub/inline-batch.ts: their before-images staged
// and appended at once). At each round's closing flush the image is copied aside; every such
// point restores byte-exact, also after a hub kill -9 taken while fio was writing.
import { strict as assert } from 'node:assert';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { execFile, execFileSync } from 'node:child_process';
import { sha, waitFor } from './harness/util';
import { startProtectedPair, ProtectedPair, rephub, points } from './harness/pair';

const MiB = 1 << 20;
const SIZE = 8 * MiB;

function fioArgs(uri: string, seed: number, mib: number): string[] {
  return [
    '--name=w',
    '--ioengine=nbd',
    `--uri=${uri}`,
    '--rw=randwrite',
    '--bsrange=512-16k',
    '--blockalign=512',
    '--iodepth=16',
    `--offset=${3 * MiB + 256 * 1024}`, // straddles regions of data and of holes
    '--size=512k',
    `--io_size=${mib}m`, // the 512 KiB range over and over
    `--randseed=${seed}`,
    '--end_fsync=1',
  ];
}

describe('journal: small writes at depth 16 (e2e)', function () {
  this.timeout(300_000);
  let pair: ProtectedPair | undefined;

  afterEach(async () => {
    await pair?.agent.stop();
    await pair?.hub.stop();
    pair = undefined;
  });

  it('every flush point restores byte-exact, also after a hub kill -9 mid-stream', async () => {
    pair = await startProtectedPair(SIZE);
    const p = pair;
    const copies: { id: number; file: string }[] = [];
    for (let round = 0; round < 4; round++) {
      const before = points(p).length ? points(p)[points(p).length - 1].id : 0;
      execFileSync('fio', fioArgs(p.agent.uri('V1'), 100 + round, 24), { timeout: 120_000, stdio: 'ignore' });
      await waitFor('agent clean', () => p.agent.clean());
      let last = -1;
      const cp = await waitFor(`the flush point of round ${round}`, async () => {
        // the newest flush point: an interval point (POINT) asked for meanwhile may land after it
        const pts = points(p).filter((x: any) => x.kind === 'flush'),
          newest = pts[pts.length - 1];
        const settled = newest && newest.id > before && newest.id === last;
        last = newest?.id ?? -1;
        await new Promise((r) => setTimeout(r, 300));
        return settled ? newest : undefined;
      });
      copies.push({ id: cp.id, file: path.join(p.dir, `copy-${cp.id}.img`) });
      fs.copyFileSync(p.img, copies[round].file); // no writer runs meanwhile
    }
    assert.notEqual(sha(copies[0].file), sha(copies[3].file), 'the rounds changed the image');
    for (const c of copies) {
      const out = path.join(p.dir, `restored-${c.id}.img`);
      rephub(p, 'restore', '--vm', 'vm1', '--volume', 'V1', '--at', String(c.id), '--to', out);
      assert.equal(sha(out), sha(c.file), `point ${c.id} restores byte-exact`);
    }

    // a hub kill -9 while fio writes: the points listed before it restore byte-exact afterwards
    const listed = points(p).map((c) => c.id);
    const fio = new Promise<void>((res, rej) =>
      execFile('fio', fioArgs(p.agent.uri('V1'), 999, 160), { timeout: 120_000 }, (e) => (e ? rej(e) : res())),
    );
    const applied = (await p.hub.status()).volumes[0].writesApplied;
    await waitFor(
      'the hub applying the new writes',
      async () => (await p.hub.status()).volumes[0].writesApplied > applied + 500,
    );
    await p.hub.kill9();
    await fio; // the guest never waits for the hub
    await p.hub.start();
    assert.deepEqual(
      points(p)
        .map((c) => c.id)
        .slice(0, listed.length),
      listed,
    );
    for (const c of copies) {
      const out = path.join(p.dir, `after-kill-${c.id}.img`);
      rephub(p, 'restore', '--vm', 'vm1', '--volume', 'V1', '--at', String(c.id), '--to', out);
      assert.equal(sha(out), sha(c.file), `point ${c.id} after a kill -9 mid-stream`);
    }
    await p.hub.converged('V1', p.img, p.rep, 60_000);
  });
});
