// FileVolume's writes in flight with --cache none (storage/volume.ts over storage/write-window.ts),
// over a real file, with O_DIRECT and with payloads it cannot take (misaligned: page-cache copies
// through the same window): several writes travel at once, a write or read overlapping one in
// flight waits for it, a flush drains them, a failing write fails the next flush (once, naming
// its offset; writesFailed() says so until then), and a pooled payload stays held until it
// lands. The threadpool write is slowed (fs.write intercepted) so that writes really are in
// flight when the next one comes.
import { strict as assert } from 'node:assert';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { randomBytes } from 'node:crypto';
import { FileVolume, VolumeError, DIRECT_ALIGN, DIRECT_WINDOW_WRITES } from '../storage/volume';
import { BufferPool } from '../src/buffer-pool';
import { tmpdir } from './harness/util';
// the real module object (not the import-star wrapper), so the test can intercept fs.write
import realFs = require('node:fs');

const MiB = 1 << 20;
type WriteCb = (e: NodeJS.ErrnoException | null, n: number) => void;

for (const direct of [true, false])
  // false: payloads 512 bytes off alignment
  describe(`FileVolume --cache none: writes in flight, ${direct ? 'O_DIRECT' : 'misaligned payloads (buffered)'}`, () => {
    let dir: string;
    let v: FileVolume;
    let pool: BufferPool;
    let model: Buffer;
    const orig = realFs.write;
    let inflight = 0,
      maxInflight = 0;
    let failAt = -1; // the position of a large write that fails with EIO

    beforeEach(() => {
      dir = tmpdir();
      pool = new BufferPool(MiB, 32, DIRECT_ALIGN);
      v = FileVolume.open(path.join(dir, 'rep2.img'), { createSize: 16 * MiB, direct: true, holds: pool });
      model = Buffer.alloc(16 * MiB);
      inflight = maxInflight = 0;
      failAt = -1;
      // Large writes (the windowed ones) land 20 ms late: the next writes come while they travel.
      (realFs as any).write = (fd: number, buf: Buffer, off: number, len: number, pos: number, cb: WriteCb) => {
        if (len < 256 * 1024) return (orig as any)(fd, buf, off, len, pos, cb);
        inflight++;
        maxInflight = Math.max(maxInflight, inflight);
        setTimeout(() => {
          const done: WriteCb = (e, n) => {
            inflight--;
            cb(e, n);
          };
          if (pos === failAt) done(Object.assign(new Error('EIO'), { code: 'EIO' }), 0);
          else (orig as any)(fd, buf, off, len, pos, done);
        }, 20);
      };
    });
    afterEach(async () => {
      realFs.write = orig;
      await v.close();
      fs.rmSync(dir, { recursive: true, force: true });
    });

    /** A 1 MiB payload from the pool, aligned as the hub receives one. */
    function payload(fill: number): Buffer {
      const b = pool.take(MiB, direct ? 0 : 512);
      randomBytes(MiB).copy(b);
      b[0] = fill;
      return b;
    }
    /** Write as the hub's apply queue does: the payload goes back to the pool when write() returns. */
    async function apply(b: Buffer, off: number): Promise<void> {
      b.copy(model, off);
      await v.write(b, off);
      pool.give(b);
    }
    const onDisk = () => fs.readFileSync(path.join(dir, 'rep2.img'));

    it('several writes travel at once; a flush drains them; payloads stay held until they land', async () => {
      for (let i = 0; i < 6; i++) await apply(payload(i), i * MiB);
      assert.ok(maxInflight >= 2, `writes in flight at once: ${maxInflight}`);
      assert.ok(maxInflight <= DIRECT_WINDOW_WRITES, 'within the window');
      assert.equal(pool.idle, 0, 'no payload back in the pool while its write travels');
      await v.flush();
      assert.equal(inflight, 0, 'the flush waited for every write');
      assert.equal(pool.idle, 6, 'every payload back once landed');
      assert.equal(v.directBytes, direct ? 6 * MiB : 0);
      assert.ok(onDisk().equals(model));
    });

    it('an overlapping write waits for the one in flight; a read sees the writes before it', async () => {
      await apply(payload(1), 2 * MiB);
      await apply(payload(2), 2 * MiB + 512 * 1024); // overlaps the first: lands after it
      const small = randomBytes(4096); // buffered, inside the second while it travels
      small.copy(model, 3 * MiB);
      await v.write(small, 3 * MiB);
      const back = Buffer.alloc(2 * MiB);
      await v.read(back, 2 * MiB);
      assert.ok(back.equals(model.subarray(2 * MiB, 4 * MiB)), 'the read sees every write asked for before it');
      await apply(payload(3), 5 * MiB);
      const bulk = Buffer.alloc(MiB);
      await v.readBulk(bulk, 5 * MiB);
      assert.ok(bulk.equals(model.subarray(5 * MiB, 6 * MiB)), 'readBulk too');
      assert.ok(v.landing!(8 * MiB, 9 * MiB) === null, 'nothing in flight where nothing was written');
      await apply(payload(4), 8 * MiB);
      assert.ok(v.landing!(8 * MiB, 8 * MiB + 4096) !== null, 'a synchronous writer is told to wait');
      await v.flush();
      assert.ok(onDisk().equals(model), 'the file holds every write in stream order');
    });

    it('a failing write fails the next flush, naming its offset, once; its payload goes back', async () => {
      failAt = 4 * MiB;
      await apply(payload(1), 3 * MiB);
      await apply(payload(2), 4 * MiB); // resolves: it is on its way
      await apply(payload(3), 5 * MiB);
      await new Promise((r) => setTimeout(r, 60)); // landed (failed) by now
      assert.equal(v.writesFailed!(), true, 'the failure is known before the flush that reports it');
      let err: unknown;
      await v.flush().catch((e) => (err = e));
      assert.equal(v.writesFailed!(), false, 'reported: cleared');
      assert.ok(err instanceof VolumeError, `flush rejected with ${err}`);
      assert.equal((err as VolumeError).offset, 4 * MiB);
      assert.match((err as Error).message, /EIO/);
      assert.equal(pool.idle, 3, 'the failed payload went back to the pool too');
      await v.flush(); // reported once; the next flush covers only what came after
      const disk = onDisk();
      assert.ok(disk.subarray(3 * MiB, 4 * MiB).equals(model.subarray(3 * MiB, 4 * MiB)));
      assert.ok(disk.subarray(5 * MiB, 6 * MiB).equals(model.subarray(5 * MiB, 6 * MiB)));
    });

    it('a payload not from the pool: write() returns once it landed', async () => {
      const own = randomBytes(MiB);
      const other = new BufferPool(MiB, 1, DIRECT_ALIGN).take(MiB, direct ? 0 : 512); // aligned, another pool's
      own.copy(other);
      await v.write(other, 7 * MiB);
      assert.equal(inflight, 0, 'landed before write() returned');
      other.fill(0); // the caller may reuse it at once
      await v.flush();
      assert.ok(
        onDisk()
          .subarray(7 * MiB, 8 * MiB)
          .equals(own),
      );
    });
  });
