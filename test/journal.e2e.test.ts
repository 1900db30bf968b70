// Point-in-time recovery end to end, with real hub and agent processes and a real NBD client
// (qemu-io) writing through the agent's export: at each of several checkpoints made by guest
// flushes the protected image is copied aside (writes paused), then `rephub restore` of each
// checkpoint is byte-equal to its copy, to a file and to an NBD export (qemu-nbd). A tag is
// listed by `rephub checkpoints`. After a hub kill -9 every acked checkpoint is still there and
// restores byte-exact.
import { strict as assert } from 'node:assert';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { execFileSync, spawn } from 'node:child_process';
import { sha, waitFor } from './harness/util';
import { CLI } from './harness/hub-process';
import { startProtectedPair, ProtectedPair, rephub, points } from './harness/pair';
import { freePort } from './harness/ports';
import { endProcess } from './harness/child';

const MiB = 1 << 20;
const SIZE = 32 * MiB;

describe('journal: point-in-time recovery (e2e)', function () {
  this.timeout(300_000);
  let pair: ProtectedPair | undefined;

  afterEach(async () => {
    await pair?.agent.stop();
    await pair?.hub.stop();
    pair = undefined;
  });

  it('restores each flush checkpoint byte-exact, to a file and over NBD, and after a hub kill -9', async () => {
    pair = await startProtectedPair(SIZE);
    const p = pair;
    const copies: { id: number; file: string }[] = [];
    for (let i = 0; i < 6; i++) {
      const before = points(p).length ? points(p)[points(p).length - 1].id : 0;
      const cmds = [];
      for (let w = 0; w < 4; w++) {
        const off = ((i * 7 + w * 5) % 30) * MiB + w * 12_288;
        cmds.push('-c', `write -P 0x${(0x20 + i * 4 + w).toString(16)} ${off} ${64 * 1024 * (1 + ((i + w) % 8))}`);
      }
      execFileSync('qemu-io', ['-f', 'raw', ...cmds, '-c', 'flush', p.agent.uri('V1')], { timeout: 60_000 });
      await waitFor('agent clean', () => p.agent.clean());
      // the guest's last flush is the newest point once nothing more arrives (qemu-io flushes on close too)
      let last = -1;
      const cp = await waitFor(`the flush checkpoint of round ${i}`, async () => {
        // the newest flush point: an interval point (POINT) asked for meanwhile may land after it
        const pts = points(p).filter((x: any) => x.kind === 'flush'),
          newest = pts[pts.length - 1];
        const settled = newest && newest.id > before && newest.id === last;
        last = newest?.id ?? -1;
        await new Promise((r) => setTimeout(r, 300));
        return settled ? newest : undefined;
      });
      copies.push({ id: cp.id, file: path.join(p.dir, `copy-${cp.id}.img`) });
      fs.copyFileSync(p.img, copies[i].file); // no writer runs meanwhile
    }
    const tag = JSON.parse(
      execFileSync(
        process.execPath,
        [CLI, 'checkpoint', '--vm', 'vm1', '--label', 'before upgrade', '--hub', `http://${p.hub.http}`],
        { encoding: 'utf8', env: { ...process.env, REPHUB_ADMIN_TOKEN_FILE: p.hub.adminTokenFile } },
      ).split('\t')[0],
    );
    assert.ok(points(p).some((c) => c.id === tag && c.kind === 'tag' && c.label === 'before upgrade'));

    for (const c of copies) {
      const out = path.join(p.dir, `restored-${c.id}.img`);
      rephub(p, 'restore', '--vm', 'vm1', '--volume', 'V1', '--at', String(c.id), '--to', out);
      assert.equal(sha(out), sha(c.file), `checkpoint ${c.id} restores byte-exact`);
    }
    assert.notEqual(sha(copies[0].file), sha(copies[5].file), 'the checkpoints differ from each other');

    // to an NBD export: qemu-nbd serving an empty image
    const target = path.join(p.dir, 'nbd-target.img');
    fs.writeFileSync(target, Buffer.alloc(0));
    fs.truncateSync(target, SIZE);
    const port = await freePort();
    const nbd = spawn('qemu-nbd', ['-f', 'raw', '-p', String(port), '-b', '127.0.0.1', '-x', 'T', '-t', target]);
    try {
      await waitFor('qemu-nbd listening', () => {
        try {
          execFileSync('nbdinfo', [`nbd://127.0.0.1:${port}/T`], { stdio: 'ignore' });
          return true;
        } catch {
          return false;
        }
      });
      rephub(
        p,
        'restore',
        '--vm',
        'vm1',
        '--volume',
        'V1',
        '--at',
        String(copies[2].id),
        '--to',
        `nbd://127.0.0.1:${port}/T`,
      );
      assert.equal(sha(target), sha(copies[2].file), 'restored over NBD byte-exact');
    } finally {
      await endProcess(nbd, 'SIGTERM');
    }

    // a hub kill -9: every listed checkpoint is still there and restores byte-exact
    const listed = points(p).map((c) => c.id);
    await p.hub.kill9();
    await p.hub.start();
    assert.deepEqual(
      points(p)
        .map((c) => c.id)
        .slice(0, listed.length),
      listed,
    );
    for (const c of [copies[0], copies[5]]) {
      const out = path.join(p.dir, `after-kill-${c.id}.img`);
      rephub(p, 'restore', '--vm', 'vm1', '--volume', 'V1', '--at', String(c.id), '--to', out);
      assert.equal(sha(out), sha(c.file), `checkpoint ${c.id} after kill -9`);
    }
    const st = await p.hub.status();
    assert.equal(st.journals[0].vm, 'vm1');
    assert.ok(st.journals[0].points >= 7 && st.journals[0].bytes > 0);
  });
});
