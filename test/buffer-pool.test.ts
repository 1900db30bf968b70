import { strict as assert } from 'node:assert';
import { BufferPool } from '../src/buffer-pool';
import { FrameDecoder, encodeProtectedWriteHead, IO_OK } from '../protocol';

describe('BufferPool', () => {
  it('reuses a given-back buffer, ignores foreign and repeated gives, keeps at most maxIdle idle', () => {
    const pool = new BufferPool(1024, 2);
    const a = pool.take(1000);
    assert.equal(a.length, 1000);
    pool.give(a.subarray(10, 20)); // any view of it
    const b = pool.take(512);
    assert.equal(b.buffer, a.buffer, 'the same memory again');
    pool.give(b);
    pool.give(b); // a second give must not put it in the pool twice
    assert.equal(pool.idle, 1);
    const c = pool.take(100),
      d = pool.take(100);
    assert.notEqual(c.buffer, d.buffer, 'two live buffers never share memory');
    pool.give(Buffer.alloc(100)); // not from the pool
    assert.equal(pool.idle, 0);
    const e = pool.take(100);
    for (const x of [c, d, e]) pool.give(x);
    assert.equal(pool.idle, 2, 'idle buffers are bounded');
    const big = pool.take(4096);
    assert.equal(big.length, 4096, 'larger than a pool buffer: allocated, not pooled');
    pool.give(big);
    assert.equal(pool.idle, 2);
  });

  it('trim() drops only the idle buffers no take() needed since the last trim, down to `keep`', () => {
    const pool = new BufferPool(1024, 8);
    const lent = Array.from({ length: 6 }, () => pool.take(100));
    for (const b of lent) pool.give(b);
    assert.equal(pool.idle, 6);
    assert.equal(pool.trim(2), 0, 'a period that began with none idle has nothing untouched');
    const again = [pool.take(100), pool.take(100)]; // the burst now needs 2 of the 6
    for (const b of again) pool.give(b);
    assert.equal(pool.trim(1), 4, 'the 4 never taken this period go');
    assert.equal(pool.idle, 2);
    assert.equal(pool.trim(1), 1, '... and the next period, down to keep');
    assert.equal(pool.idle, 1);
    assert.equal(pool.trim(1), 0, 'never below keep');
    const reused = pool.take(100);
    assert.ok(
      lent.some((b) => b.buffer === reused.buffer),
      'what stayed is reused',
    );
  });

  it('a held buffer returns to the pool only when its last holder gives it back', () => {
    const pool = new BufferPool(1024, 2);
    const a = pool.take(512);
    assert.equal(pool.hold(a.subarray(0, 8)), true);
    pool.give(a);
    assert.equal(pool.idle, 0, 'still held by the second user');
    assert.notEqual(pool.take(512).buffer, a.buffer, 'a held buffer is never lent twice');
    pool.give(a);
    assert.equal(pool.idle, 1);
    pool.give(a); // after the last: ignored
    assert.equal(pool.idle, 1);
    assert.equal(pool.hold(a), false, 'idle: not lent, no hold');
    assert.equal(pool.hold(Buffer.alloc(10)), false, "not the pool's");
  });

  it('with align, take(n, skew) puts byte skew of the view on an aligned address', () => {
    const { misalign } = require('../storage/fileio');
    const pool = new BufferPool(8192, 2, 4096);
    for (const skew of [0, 24, 4096]) {
      const b = pool.take(5000, skew);
      assert.equal(b.length, 5000);
      assert.equal(misalign(b.subarray(skew), 4096), 0, `skew ${skew}`);
      pool.give(b);
    }
    assert.equal(pool.idle, 1, 'the same buffer each time');
    assert.throws(() => pool.take(10, 4097), RangeError);
    const big = pool.take(3 * 8192, 16); // larger than a pool buffer: not pooled, aligned all the same
    assert.equal(big.length, 3 * 8192);
    assert.equal(misalign(big.subarray(16), 4096), 0, 'an oversize view is aligned too');
    pool.give(big);
    assert.equal(pool.idle, 1);
  });

  it('a FrameDecoder joins a payload spanning chunks into the buffer its allocator gives', () => {
    const pool = new BufferPool(8192, 4);
    const got: Buffer[] = [];
    const fd = new FrameDecoder(
      (_cmd, p) => got.push(p),
      undefined,
      (n) => pool.take(n),
    );
    const data = Buffer.alloc(4096, 7);
    const frame = Buffer.concat([encodeProtectedWriteHead(1, 0, 8, IO_OK), data]);
    for (let o = 0; o < frame.length; o += 1000) fd.push(frame.subarray(o, o + 1000));
    assert.equal(got.length, 1);
    assert.ok(got[0].subarray(got[0].length - 4096).equals(data));
    pool.give(got[0]);
    assert.equal(pool.idle, 1, "the joined payload was the pool's");
  });
});
