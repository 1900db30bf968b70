// The write window of a remote image (storage/write-window.ts), with submits we complete by hand:
// room and overlap limits hold writes back, a failure is reported by the next drain and only
// once, a drain does not wait for writes handed over after it began, and reads keep their place
// among the writes.
import { strict as assert } from 'node:assert';
import { WriteWindow } from '../storage/write-window';

/** A submit that lands when we say so. */
function manual(): { submit: () => Promise<void>; land: () => void; fail: (e: Error) => void } {
  let land!: () => void, fail!: (e: Error) => void;
  const p = new Promise<void>((res, rej) => {
    land = res;
    fail = rej;
  });
  return { submit: () => p, land, fail };
}

const tick = () => new Promise((r) => setImmediate(r));

describe('write window (writes in flight to a remote image)', () => {
  it('an overlapping write waits for the one in flight; a disjoint one does not', async () => {
    const w = new WriteWindow(8, 1 << 20);
    const a = manual();
    await w.add(0, 4096, a.submit);
    let overlapStarted = false;
    const b = manual();
    const overlap = w.add(2048, 4096, () => ((overlapStarted = true), b.submit()));
    await w.add(8192, 4096, manual().submit); // disjoint: goes at once
    await tick();
    assert.equal(overlapStarted, false, 'held behind the write it overlaps');
    a.land();
    await overlap;
    assert.equal(overlapStarted, true);
  });

  it('the write and byte limits hold writes back until one lands', async () => {
    const w = new WriteWindow(2, 1 << 20);
    const a = manual();
    await w.add(0, 4096, a.submit);
    await w.add(4096, 4096, manual().submit);
    let third = false;
    const p = w.add(8192, 4096, async () => void (third = true));
    await tick();
    assert.equal(third, false, 'two in flight: the third waits');
    assert.equal(w.writes, 2);
    a.land();
    await p;
    assert.equal(third, true);
    const big = new WriteWindow(8, 8192);
    const c = manual();
    await big.add(0, 8192, c.submit);
    let fits = false;
    const q = big.add(8192, 4096, async () => void (fits = true));
    await tick();
    assert.equal(fits, false, 'the byte limit is full');
    c.land();
    await q;
  });

  it('a failure surfaces at the next drain, once, with its cause', async () => {
    const w = new WriteWindow();
    const a = manual();
    await w.add(4096, 512, a.submit);
    a.fail(new Error('rbd:p/i: write of 512 bytes at 4096: errno 5'));
    await assert.rejects(w.drain(), /at 4096: errno 5/);
    await w.drain(); // reported once: the owner has failed what the flush covered
  });

  it('a drain waits for what was handed over before it, not for later writes', async () => {
    const w = new WriteWindow();
    const a = manual();
    await w.add(0, 4096, a.submit);
    let drained = false;
    const d = w.drain().then(() => (drained = true));
    const later = manual();
    await w.add(65536, 4096, later.submit);
    a.land();
    await d;
    assert.equal(drained, true, 'the later write is still in flight');
    assert.equal(w.writes, 1);
    later.land();
    await w.drain();
    assert.equal(w.writes, 0);
  });

  it('a read waits for the writes before it that it overlaps; a write after it waits for the read', async () => {
    const w = new WriteWindow();
    const a = manual();
    await w.add(0, 8192, a.submit);
    let readStarted = false;
    const r = manual();
    const read = w.read(4096, 8192, () => ((readStarted = true), r.submit()));
    let writeStarted = false;
    const after = w.add(4096, 4096, async () => void (writeStarted = true));
    await tick();
    assert.equal(readStarted, false, 'the read waits for the write before it');
    a.land();
    await tick();
    await tick();
    assert.equal(readStarted, true);
    assert.equal(writeStarted, false, 'the write asked for after the read waits until it has read');
    r.land();
    await read;
    await after;
    assert.equal(writeStarted, true);
    const free = w.read(1 << 20, (1 << 20) + 512, async () => undefined); // overlapping nothing: at once
    await free;
  });

  it('a write with its own copy (keep) joins at once behind what it overlaps, and is submitted after it', async () => {
    const w = new WriteWindow();
    const r = manual();
    const read = w.read(0, 4096, r.submit);
    const order: string[] = [];
    await w.add(
      0,
      8192,
      async () => void order.push('caller buffer'),
      () => async () => void order.push('own copy'),
    ); // resolves with the read still out: the caller is not held for the round trip
    const w2 = manual();
    await w.add(
      4096,
      4096,
      () => (order.push('second'), w2.submit()),
      () => () => (order.push('second'), w2.submit()),
    );
    assert.equal(w.writes, 3, 'the read and both writes are in the window (they count against its room)');
    await tick();
    assert.deepEqual(order, [], 'nothing submitted before the read has read');
    r.land();
    await read;
    for (let i = 0; i < 5; i++) await tick();
    assert.deepEqual(order, ['own copy', 'second'], 'in stream order, the chained write from its own copy');
    w2.land();
    await w.drain();
    assert.equal(w.writes, 0);
  });
});
