// The journal blocks recorded in the current epoch (journal-target.ts): a sparse bitset in pages
// of 32768 blocks (4 KiB of bits, 128 MiB of volume at 4 KiB blocks), made on first use. A
// 1 MiB write marks or checks 8 words, where a Set<number> took 256 insertions (6 % of the hub's
// CPU in a 1 GiB initial sync) and ~30 bytes per block; pages are capped, so a volume's set
// stays under maxPages x 4 KiB however its writes scatter. Block numbers may pass 2^32 (a
// 64 TiB volume has 2^34 blocks): page math divides, bit math stays inside a page.
import { assert } from './assert';

export const BLOCKS_PER_PAGE = 32768;
const WORDS = BLOCKS_PER_PAGE / 32;

/** Bits lo..hi (0..31) of a word, as an int32. */
function mask(lo: number, hi: number): number {
  return (0xffffffff >>> (31 - hi)) & (0xffffffff << lo);
}

export class BlockSet {
  private readonly pages = new Map<number, Int32Array>();

  constructor(readonly maxPages: number) {
    assert(Number.isInteger(maxPages) && maxPages > 0, 'a block set has room for at least one page');
  }

  get pageCount(): number {
    return this.pages.size;
  }

  clear(): void {
    this.pages.clear();
  }

  /** Marks blocks [first, last]; false, marking nothing, when that would pass maxPages. */
  add(first: number, last: number): boolean {
    assert(Number.isSafeInteger(first) && first >= 0 && last >= first, 'a block range is ordered');
    const p0 = Math.floor(first / BLOCKS_PER_PAGE),
      p1 = Math.floor(last / BLOCKS_PER_PAGE);
    let missing = 0;
    for (let p = p0; p <= p1; p++) if (!this.pages.has(p)) missing++;
    if (this.pages.size + missing > this.maxPages) return false;
    for (let p = p0; p <= p1; p++) {
      let page = this.pages.get(p);
      if (page === undefined) this.pages.set(p, (page = new Int32Array(WORDS)));
      const a = p === p0 ? first - p * BLOCKS_PER_PAGE : 0,
        b = p === p1 ? last - p * BLOCKS_PER_PAGE : BLOCKS_PER_PAGE - 1;
      const wa = a >>> 5,
        wb = b >>> 5;
      if (wa === wb) page[wa] |= mask(a & 31, b & 31);
      else {
        page[wa] |= mask(a & 31, 31);
        page.fill(-1, wa + 1, wb);
        page[wb] |= mask(0, b & 31);
      }
    }
    return true;
  }

  /** Every block of [first, last] is marked. */
  has(first: number, last: number): boolean {
    const p0 = Math.floor(first / BLOCKS_PER_PAGE),
      p1 = Math.floor(last / BLOCKS_PER_PAGE);
    for (let p = p0; p <= p1; p++) {
      const page = this.pages.get(p);
      if (page === undefined) return false;
      const a = p === p0 ? first - p * BLOCKS_PER_PAGE : 0,
        b = p === p1 ? last - p * BLOCKS_PER_PAGE : BLOCKS_PER_PAGE - 1;
      const wa = a >>> 5,
        wb = b >>> 5;
      if (wa === wb) {
        const m = mask(a & 31, b & 31);
        if ((page[wa] & m) !== m) return false;
        continue;
      }
      const ma = mask(a & 31, 31),
        mb = mask(0, b & 31);
      if ((page[wa] & ma) !== ma || (page[wb] & mb) !== mb) return false;
      for (let w = wa + 1; w < wb; w++) if (page[w] !== -1) return false;
    }
    return true;
  }
}
