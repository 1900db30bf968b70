// The mirror's ring of pending writes (src/agent/pending-ring.ts) against an array model: any
// run of pushes and shifts, wrapping and growing, reads back what was pushed, oldest first.
import { strict as assert } from 'node:assert';
import fc from 'fast-check';
import { PendingRing } from '../src/agent/pending-ring';

describe('PendingRing', () => {
  it('matches an array of the same writes through any pushes and shifts', () => {
    fc.assert(
      fc.property(
        fc.integer({ min: 1, max: 40 }),
        fc.integer({ min: 1, max: 8 }),
        fc.array(fc.integer({ min: 0, max: 3 }), { maxLength: 300 }),
        (cap, first, ops) => {
          const ring = new PendingRing(cap, first); // grows from `first` slots, wrapped or not
          const model: number[][] = [];
          let seq = 0;
          for (const op of ops) {
            if (op > 0 && model.length < cap) {
              seq++;
              // values past 32 bits where the slot allows them: seq, offset
              const w = [seq * 2 ** 33, op, seq, seq + op, seq * 2 ** 40, seq * 512];
              ring.push(w[0], w[1], w[2], w[3], w[4], w[5]);
              model.push(w);
            } else if (model.length > 0) {
              ring.shift();
              model.shift();
            }
            assert.equal(ring.size, model.length);
            model.forEach((w, k) => {
              const i = ring.slot(k);
              assert.deepEqual(
                [ring.seqs[i], ring.volumes[i], ring.firsts[i], ring.lasts[i], ring.offsets[i], ring.lens[i]],
                w,
              );
            });
            assert.ok(ring.allocated <= cap, 'never past the limit');
          }
        },
      ),
    );
  });

  it('grows by doubling only when full, up to its limit', () => {
    const ring = new PendingRing(10, 2);
    const sizes: number[] = [];
    for (let s = 1; s <= 10; s++) {
      ring.push(s, 0, s, s, s * 4096, 4096);
      sizes.push(ring.allocated);
      if (s % 3 === 0) ring.shift(); // the head moves: later growths copy a wrapped ring
    }
    assert.deepEqual(sizes, [2, 2, 4, 4, 4, 8, 8, 8, 8, 8]); // full at the 3rd push (2 held), the 6th (4 held)
    assert.equal(ring.seqs[ring.slot(0)], 4, 'oldest first after the copies (1-3 shifted)');
  });

  it('refuses a push past its capacity, a shift of nothing, a read past its end', () => {
    const ring = new PendingRing(2);
    ring.push(1, 0, 0, 0, 0, 4096);
    ring.push(2, 0, 1, 1, 4096, 4096);
    assert.throws(() => ring.push(3, 0, 2, 2, 8192, 4096), /within the ring/);
    assert.throws(() => ring.slot(2), /within the ring/);
    ring.clear();
    assert.equal(ring.size, 0);
    assert.throws(() => ring.shift(), /empty/);
    assert.throws(() => new PendingRing(0), /pending ring of 0/);
  });
});
