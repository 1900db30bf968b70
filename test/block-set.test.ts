// The journal's seen set (storage/block-set.ts) against a plain Set of block numbers.
import { strict as assert } from 'node:assert';
import fc from 'fast-check';
import { BlockSet, BLOCKS_PER_PAGE } from '../storage/block-set';

describe('BlockSet (the blocks a journal recorded this epoch)', () => {
  it('answers has() as a Set of every added block would, across words and pages', () => {
    const base = 2 ** 33; // block numbers past 2^32 (a 32 TiB+ volume)
    const range = fc
      .tuple(fc.integer({ min: 0, max: 3 * BLOCKS_PER_PAGE }), fc.integer({ min: 0, max: 300 }))
      .map(([a, n]) => [base + a, base + a + n] as const);
    fc.assert(
      fc.property(fc.array(range, { maxLength: 30 }), fc.array(range, { maxLength: 30 }), (adds, checks) => {
        const s = new BlockSet(8),
          ref = new Set<number>();
        for (const [a, b] of adds) {
          assert.equal(s.add(a, b), true, 'room for 4 pages');
          for (let k = a; k <= b; k++) ref.add(k);
        }
        for (const [a, b] of [...adds, ...checks]) {
          let all = true;
          for (let k = a; k <= b && all; k++) all = ref.has(k);
          assert.equal(s.has(a, b), all, `[${a - base}, ${b - base}]`);
        }
      }),
      { numRuns: 300 },
    );
  });

  it('word edges: one block, a whole word, the page boundary', () => {
    const s = new BlockSet(4);
    s.add(31, 31);
    assert.equal(s.has(31, 31), true);
    assert.equal(s.has(30, 31), false);
    assert.equal(s.has(31, 32), false);
    s.add(32, 63);
    assert.equal(s.has(31, 63), true);
    s.add(BLOCKS_PER_PAGE - 1, BLOCKS_PER_PAGE);
    assert.equal(s.has(BLOCKS_PER_PAGE - 1, BLOCKS_PER_PAGE), true);
    assert.equal(s.has(BLOCKS_PER_PAGE - 2, BLOCKS_PER_PAGE), false);
    assert.equal(s.pageCount, 2);
  });

  it('stays within its pages: a range that needs more marks nothing; clear() frees them', () => {
    const s = new BlockSet(2);
    assert.equal(s.add(0, 0), true);
    assert.equal(s.add(5 * BLOCKS_PER_PAGE, 5 * BLOCKS_PER_PAGE + 1), true);
    assert.equal(s.add(9 * BLOCKS_PER_PAGE, 9 * BLOCKS_PER_PAGE), false, 'a third page');
    assert.equal(s.add(BLOCKS_PER_PAGE - 1, BLOCKS_PER_PAGE), false, 'a range needing one new page of two');
    assert.equal(s.has(BLOCKS_PER_PAGE - 1, BLOCKS_PER_PAGE - 1), false, 'nothing of it was marked');
    assert.equal(s.add(7, 9), true, 'an existing page still takes blocks');
    assert.equal(s.pageCount, 2);
    s.clear();
    assert.equal(s.pageCount, 0);
    assert.equal(s.has(0, 0), false);
  });
});
