// RbdVolume against a real one-node Ceph cluster (test/harness/ceph.ts): the image is created at
// the asked size, data round-trips, flush maps to rbd_aio_flush, out-of-range IO and a missing
// pool give clear errors, and the exclusive lock keeps a second writer out.
import { strict as assert } from 'node:assert';
import { randomBytes } from 'node:crypto';
import * as path from 'node:path';
import { readRegion } from './harness/util';
import { startCeph, CephCluster } from './harness/ceph';
import { RbdVolume, parseRbdSpec } from '../storage/rbd-volume';

describe('RBD recovery volumes (librbd through native/rbd.c)', function () {
  this.timeout(120_000);
  let ceph: CephCluster;
  before(async () => {
    ceph = await startCeph();
  });
  after(() => ceph?.stop());

  it('parses rbd:POOL/IMAGE[:conf=PATH][:id=USER] and refuses the rest', () => {
    assert.deepEqual(parseRbdSpec('rbd:p/i:conf=/etc/c.conf:id=hub'), {
      pool: 'p',
      image: 'i',
      conf: '/etc/c.conf',
      user: 'hub',
    });
    assert.equal(parseRbdSpec('/var/lib/V1R'), null);
    assert.throws(() => parseRbdSpec('rbd:noimage'), /POOL\/IMAGE/);
    assert.throws(() => parseRbdSpec('rbd:p/i:cache=none'), /unknown option "cache"/);
  });

  it('creates the image at the size asked, and data round-trips through aio', async () => {
    const v = await RbdVolume.open(parseRbdSpec(`rbd:${ceph.pool}/v1:conf=${ceph.conf}`)!, 32 << 20);
    const data = randomBytes(1 << 20);
    try {
      assert.equal(v.sizeBytes, 32 << 20);
      assert.match(ceph.run('rbd', 'info', `${ceph.pool}/v1`), /size 32 MiB/);
      await Promise.all([v.write(data, 0), v.write(data, 31 << 20), v.write(data.subarray(0, 4096), 8 << 20)]);
      await v.flush();
      const back = Buffer.alloc(1 << 20);
      await v.read(back, 31 << 20);
      assert.ok(back.equals(data));
      const small = Buffer.alloc(4096);
      await v.read(small, 8 << 20);
      assert.ok(small.equals(data.subarray(0, 4096)));
      await assert.rejects(v.write(data, 32 << 20), /outside the image/);
    } finally {
      await v.close();
    }
    // What librbd wrote is what `rbd export` reads.
    const file = path.join(ceph.dir, 'v1.export');
    ceph.run('rbd', 'export', '--no-progress', `${ceph.pool}/v1`, file);
    assert.ok(readRegion(file, 31 << 20, 1 << 20).equals(data));
    assert.ok(readRegion(file, 1 << 20, 1 << 20).equals(Buffer.alloc(1 << 20)), 'never written: zeroes');
  });

  it('writes in flight (the window): the caller may reuse its buffer, overlapping writes land in stream order, reads see them', async () => {
    const v = await RbdVolume.open(parseRbdSpec(`rbd:${ceph.pool}/v3:conf=${ceph.conf}`)!, 16 << 20);
    try {
      const buf = Buffer.alloc(1 << 20);
      const want: Buffer[] = [];
      // 40 writes of 1 MiB over the same 4 MiB, from one reused buffer, without waiting between
      // them beyond write()'s own return: without copies and overlap ordering the last one written
      // to each place is not the one read back.
      for (let i = 0; i < 40; i++) {
        buf.fill(i + 1);
        await v.write(buf, (i % 4) << 20);
        want[i % 4] = Buffer.alloc(1 << 20, i + 1);
      }
      const back = Buffer.alloc(1 << 20);
      await v.read(back, 3 << 20); // before any flush: the read waits for the writes it overlaps
      assert.ok(back.equals(want[3]), 'a read after a write sees it');
      await v.flush();
      for (let k = 0; k < 4; k++) {
        await v.read(back, k << 20);
        assert.equal(back[0], want[k][0], `MiB ${k}: the last write to it`);
        assert.ok(back.equals(want[k]), `MiB ${k}`);
      }
    } finally {
      await v.close();
    }
  });

  it('a missing pool is a clear error naming the image and the step', async () => {
    await assert.rejects(
      RbdVolume.open(parseRbdSpec(`rbd:nosuchpool/v1:conf=${ceph.conf}`)!, 1 << 20),
      /rbd:nosuchpool\/v1: open the pool/,
    );
  });

  it('the exclusive lock: the holder writes, a second client cannot take it while the holder keeps it', async () => {
    const spec = parseRbdSpec(`rbd:${ceph.pool}/v2:conf=${ceph.conf}`)!;
    const a = await RbdVolume.open(spec, 8 << 20);
    const b = await RbdVolume.open(spec, 8 << 20);
    try {
      await a.lock();
      assert.equal(await a.ownsLock(), true);
      await a.write(Buffer.alloc(4096, 1), 0);
      await assert.rejects(b.lock());
      assert.equal(await a.ownsLock(), true, 'the holder keeps it');
    } finally {
      await a.close();
      await b.close();
    }
  });
});
