// `rephub restore` over the hub's NBD server (src/hub/restore-export.ts), end to end with real
// hub and agent processes, nbdcopy and qemu-nbd: the volume as of a checkpoint, restored while
// the guest has written on since, is byte-equal to a copy taken at the point, to a file and to an
// NBD target, by the NBD path and by the HTTP stream alike. A failover test's export on the
// same hub is left alone, and the restore export is gone once the restore ends, or once its
// client goes away when nobody ends it. And a point taken before the guest overwrote the whole
// volume sequentially, with the replica out of the page cache (the journal's before-images then
// come off the disk through its read-ahead, storage/forward-read-ahead.ts), restores byte-exact.
import { strict as assert } from 'node:assert';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { execFileSync, spawn } from 'node:child_process';
import { sha, waitFor } from './harness/util';
import { startProtectedPair, ProtectedPair, rephub, points } from './harness/pair';
import { freePort } from './harness/ports';
import { endProcess } from './harness/child';
import { cachedPages, dropCache } from '../storage/fileio';

const MiB = 1 << 20;
const SIZE = 32 * MiB;

function exportsOf(port: number): string[] {
  const out = execFileSync('nbdinfo', ['--list', '--json', `nbd://127.0.0.1:${port}`], {
    encoding: 'utf8',
    stdio: ['ignore', 'pipe', 'ignore'],
  });
  return JSON.parse(out).exports.map((e: { 'export-name': string }) => e['export-name']);
}

function qemuIo(p: ProtectedPair, pattern: number, off: number, len: number): void {
  execFileSync('qemu-io', ['-f', 'raw', '-c', `write -P ${pattern} ${off} ${len}`, '-c', 'flush', p.agent.uri('V1')], {
    timeout: 60_000,
  });
}

describe('restore over the hub NBD server (e2e)', function () {
  this.timeout(300_000);
  let pair: ProtectedPair | undefined;

  afterEach(async () => {
    await pair?.agent.stop();
    await pair?.hub.stop();
    pair = undefined;
  });

  it('restores a point byte-exact by nbdcopy and by HTTP, to a file and to NBD, beside a failover test', async () => {
    pair = await startProtectedPair(SIZE);
    const p = pair;
    qemuIo(p, 0x61, 3 * MiB + 4096, 2 * MiB);
    await waitFor('agent clean', () => p.agent.clean());
    const id = Number(rephub(p, 'checkpoint', '--vm', 'vm1', '--label', 'point').split('\t')[0]);
    const copy = path.join(p.dir, 'copy.img');
    fs.copyFileSync(p.img, copy); // no writer runs meanwhile
    qemuIo(p, 0x62, 2 * MiB, 4 * MiB); // after the point: the restore must read it from the journal
    qemuIo(p, 0x63, 20 * MiB, 64 * 1024);
    await waitFor('agent clean', () => p.agent.clean());
    assert.ok(points(p).some((c) => c.id === id));
    rephub(p, 'failover-test', 'start');
    const nbdPort = p.hub.nbdPort;
    try {
      assert.deepEqual(exportsOf(nbdPort), ['V1'], 'the failover test serves V1');
      for (const via of ['nbdcopy', 'http']) {
        const out = path.join(p.dir, `restored-${via}.img`);
        rephub(p, 'restore', '--via', via, '--vm', 'vm1', '--volume', 'V1', '--at', String(id), '--to', out);
        assert.equal(sha(out), sha(copy), `restored by ${via} to a file byte-exact`);
        const target = path.join(p.dir, `nbd-target-${via}.img`);
        fs.writeFileSync(target, '');
        fs.truncateSync(target, SIZE);
        const port = await freePort();
        const nbd = spawn('qemu-nbd', ['-f', 'raw', '-p', String(port), '-b', '127.0.0.1', '-x', 'T', '-t', target]);
        try {
          await waitFor('qemu-nbd listening', () => {
            try {
              return exportsOf(port).length === 1;
            } catch {
              return false;
            }
          });
          rephub(
            p,
            'restore',
            '--via',
            via,
            '--vm',
            'vm1',
            '--volume',
            'V1',
            '--at',
            String(id),
            '--to',
            `nbd://127.0.0.1:${port}/T`,
          );
        } finally {
          await endProcess(nbd, 'SIGTERM');
        }
        assert.equal(sha(target), sha(copy), `restored by ${via} over NBD byte-exact`);
      }
      assert.deepEqual(exportsOf(nbdPort), ['V1'], 'the restore exports are gone; the failover test export stays');

      // a restore export nobody ends (the CLI killed, say) goes once its client has gone away
      const token = fs.readFileSync(p.hub.adminTokenFile, 'utf8').trim();
      const res = await fetch(`http://${p.hub.http}/restore-export`, {
        method: 'POST',
        headers: { 'content-type': 'application/json', authorization: `Bearer ${token}` },
        body: JSON.stringify({ vm: 'vm1', volume: 'V1', at: String(id) }),
      });
      const ex: any = await res.json();
      assert.equal(res.status, 200, JSON.stringify(ex));
      assert.equal(ex.size, SIZE);
      assert.ok(exportsOf(nbdPort).includes(ex.name), 'the restore export is served');
      const half = path.join(p.dir, 'by-hand.img');
      execFileSync('nbdcopy', [ex.uri, half]);
      assert.equal(sha(half), sha(copy), 'the export reads the point');
      await waitFor('the abandoned restore export gone', () => !exportsOf(nbdPort).includes(ex.name));
      assert.deepEqual(exportsOf(nbdPort), ['V1']);
    } finally {
      rephub(p, 'failover-test', 'stop');
    }
  });

  it('restores a point byte-exact after sequential overwrites of a cold, written volume', async () => {
    pair = await startProtectedPair(SIZE, [], 1); // every block written: every overwrite has a before-image
    const p = pair;
    const id = Number(rephub(p, 'checkpoint', '--vm', 'vm1', '--label', 'before').split('\t')[0]);
    const copy = path.join(p.dir, 'copy.img');
    fs.copyFileSync(p.img, copy);
    const fd = fs.openSync(p.rep, 'r'); // the replica written back and out of the page cache
    try {
      fs.fsyncSync(fd);
      assert.equal(dropCache(fd, 0, 0), 0, 'the native addon drops the cache');
      const cached = cachedPages(fd, 0, SIZE); // -1 where the kernel cannot say (Linux < 6.5)
      assert.ok(cached < SIZE / 4096 / 8, `${cached} replica pages still cached`);
    } finally {
      fs.closeSync(fd);
    }
    execFileSync(
      'fio',
      ['--name=seq', '--ioengine=nbd', `--uri=${p.agent.uri('V1')}`, '--rw=write', '--bs=4k', '--iodepth=16'].concat([
        `--size=${SIZE}`,
        '--refill_buffers',
        '--output-format=terse',
      ]),
      { timeout: 120_000, stdio: 'ignore' },
    );
    await waitFor('agent clean', () => p.agent.clean());
    await p.hub.converged('V1', p.img, p.rep, 60_000);
    assert.notEqual(sha(p.img), sha(copy), 'fio overwrote the volume');
    const out = path.join(p.dir, 'restored.img');
    rephub(p, 'restore', '--via', 'nbdcopy', '--vm', 'vm1', '--volume', 'V1', '--at', String(id), '--to', out);
    assert.equal(sha(out), sha(copy), 'the point restored byte-exact from before-images read ahead');
  });
});
