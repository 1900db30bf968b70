// Dirty bitmap over the regions of a volume. Paged: a page covers 32768 regions (4 KiB of
// bits) and is materialized only while partly dirty; a wholly clean or wholly dirty page is
// just its count, so a fully dirty 1 TiB volume at 64 KiB regions costs 2 KiB, not 2 MiB.
// nextDirty() skips clean pages by count and clean words by value. Region indexes may exceed
// 2^32 (a PiB at 4 KiB regions), so page math uses division, not 32-bit shifts.

export const PAGE_BITS = 32768;
const WORDS = PAGE_BITS / 32;
/** Flush epochs with clears awaiting their flush; more (flushes that keep failing) share the newest. */
const MAX_HELD_EPOCHS = 8;

export class DirtyBitmap {
  regions: number; // changes only through grow()
  private readonly pages: (Uint32Array | undefined)[];
  private counts: Uint32Array;
  private total = 0;
  /** Pages changed since takeChangedPages(); the state store persists them. */
  private changed = new Set<number>();
  /**
   * With holdClearsUntilFlush(): regions cleared in memory whose data is not yet covered by a
   * completed flush, per flush epoch (oldest first). The persisted form keeps them dirty.
   */
  private held: { epoch: number; mask: DirtyBitmap }[] | null = null;
  private epoch = 0;

  constructor(
    public sizeBytes: number, // changes only through grow()
    readonly regionSize: number,
  ) {
    if (!Number.isInteger(Math.log2(regionSize)) || regionSize < 4096 || regionSize > 1 << 20) {
      throw new RangeError(`region size ${regionSize} must be a power of two in 4 KiB..1 MiB`);
    }
    if (!Number.isSafeInteger(sizeBytes) || sizeBytes < 0) throw new RangeError(`bad volume size ${sizeBytes}`);
    this.regions = Math.ceil(sizeBytes / regionSize);
    const n = Math.ceil(this.regions / PAGE_BITS);
    this.pages = new Array(n);
    this.counts = new Uint32Array(n);
  }

  /**
   * The volume grew to `sizeBytes` (an online resize): the new regions start clean, the old keep
   * their bits. A last page held as a bare count ("full") would read the new regions dirty once
   * it covers more of them, so it is materialized first.
   */
  grow(sizeBytes: number): void {
    if (!Number.isSafeInteger(sizeBytes) || sizeBytes < this.sizeBytes)
      throw new RangeError(`a bitmap grows: ${sizeBytes} bytes is less than ${this.sizeBytes}`);
    const lastP = this.pages.length - 1,
      c = lastP >= 0 ? this.counts[lastP] : 0;
    if (c > 0 && !this.pages[lastP] && c < PAGE_BITS) {
      const page = new Uint32Array(WORDS);
      fillBits(page, 0, c - 1);
      this.pages[lastP] = page;
    }
    if (lastP >= 0) this.changed.add(lastP);
    this.sizeBytes = sizeBytes;
    this.regions = Math.ceil(sizeBytes / this.regionSize);
    const n = Math.ceil(this.regions / PAGE_BITS);
    const counts = new Uint32Array(n);
    counts.set(this.counts);
    this.counts = counts;
    this.pages.length = n;
    for (const h of this.held ?? []) h.mask.grow(sizeBytes);
  }

  get dirtyRegions(): number {
    return this.total;
  }

  get dirtyBytes(): number {
    if (this.total === 0) return 0;
    const last = this.regions - 1;
    const tail = this.sizeBytes - last * this.regionSize;
    return this.total * this.regionSize - (this.get(last) ? this.regionSize - tail : 0);
  }

  get pageCount(): number {
    return this.pages.length;
  }

  /** Bytes of memory held by materialized pages. */
  get memoryBytes(): number {
    let m = this.counts.byteLength;
    for (const p of this.pages) if (p) m += p.byteLength;
    return m;
  }

  regionOf(byte: number): number {
    return Math.floor(byte / this.regionSize);
  }

  private pageBits(p: number): number {
    return Math.min(PAGE_BITS, this.regions - p * PAGE_BITS);
  }

  get(r: number): boolean {
    const p = Math.floor(r / PAGE_BITS);
    const c = this.counts[p];
    if (c === 0) return false;
    const page = this.pages[p];
    if (!page) return true; // full
    const i = r % PAGE_BITS;
    return (page[i >>> 5] & (1 << (i & 31))) !== 0;
  }

  /** Mark regions [first, last] dirty. */
  setRegions(first: number, last: number): void {
    this.apply(first, last, true);
  }

  /** Mark regions [first, last] clean. */
  clearRegions(first: number, last: number): void {
    this.apply(first, last, false);
  }

  /** Mark every region touched by bytes [start, end) dirty. */
  setBytes(start: number, end: number): void {
    if (end <= start) return;
    this.apply(this.regionOf(start), this.regionOf(end - 1), true);
  }

  setAll(): void {
    if (this.regions > 0) this.apply(0, this.regions - 1, true);
  }

  private apply(first: number, last: number, dirty: boolean): void {
    if (first < 0 || last >= this.regions || first > last)
      throw new RangeError(`regions ${first}..${last} outside 0..${this.regions - 1}`);
    for (let p = Math.floor(first / PAGE_BITS); p <= Math.floor(last / PAGE_BITS); p++) {
      const bits = this.pageBits(p);
      const lo = p === Math.floor(first / PAGE_BITS) ? first % PAGE_BITS : 0;
      const hi = p === Math.floor(last / PAGE_BITS) ? last % PAGE_BITS : bits - 1;
      const c = this.counts[p];
      if ((dirty && c === bits) || (!dirty && c === 0)) continue;
      this.changed.add(p);
      if (!dirty && this.held) this.holdClears(p, lo, hi); // before the bits change
      if (lo === 0 && hi === bits - 1) {
        // whole page: collapse to a count
        this.pages[p] = undefined;
        this.total += (dirty ? bits : 0) - c;
        this.counts[p] = dirty ? bits : 0;
        continue;
      }
      let page = this.pages[p];
      if (!page) {
        page = new Uint32Array(WORDS);
        if (c !== 0) fillBits(page, 0, bits - 1); // was full
        this.pages[p] = page;
      }
      // word by word (bit by bit, clearing a 32 MiB read's 512 regions was most of a thin
      // volume's sync on the hub)
      let delta = 0;
      for (let w = lo >>> 5; w <= hi >>> 5; w++) {
        const m = wordMask(w === lo >>> 5 ? lo & 31 : 0, w === hi >>> 5 ? hi & 31 : 31);
        const was = page[w],
          now = dirty ? was | m : was & ~m;
        if (now === was) continue;
        page[w] = now;
        delta += popcount(now) - popcount(was);
      }
      this.counts[p] = c + delta;
      this.total += delta;
      if (this.counts[p] === 0 || this.counts[p] === bits) this.pages[p] = undefined;
    }
  }

  /** First dirty region >= from, or -1. */
  nextDirty(from: number): number {
    if (from < 0) from = 0;
    if (from >= this.regions) return -1;
    for (let p = Math.floor(from / PAGE_BITS); p < this.pages.length; p++) {
      if (this.counts[p] === 0) continue;
      const base = p * PAGE_BITS;
      const start = base > from ? 0 : from - base;
      const page = this.pages[p];
      if (!page) return base + start; // full page
      for (let w = start >>> 5; w < WORDS; w++) {
        let v = page[w];
        if (w === start >>> 5) v &= ~0 << (start & 31);
        if (v !== 0) return base + w * 32 + (31 - Math.clz32(v & -v));
      }
    }
    return -1;
  }

  /** First clean region >= from, or `regions` if none. */
  nextClean(from: number): number {
    for (let r = Math.max(0, from); r < this.regions;) {
      const p = Math.floor(r / PAGE_BITS);
      if (this.counts[p] === 0) return r;
      const page = this.pages[p];
      if (page) {
        // word by word, as nextDirty: region by region cost a sync pass ~half its time on a 1 TiB volume
        const base = p * PAGE_BITS,
          start = r - base;
        for (let w = start >>> 5; w < WORDS; w++) {
          let v = ~page[w];
          if (w === start >>> 5) v &= ~0 << (start & 31);
          // the bits past the volume's end are 0: a full last page answers `regions`
          if (v !== 0) return Math.min(this.regions, base + w * 32 + (31 - Math.clz32(v & -v)));
        }
      }
      r = (p + 1) * PAGE_BITS; // full page
    }
    return this.regions;
  }

  /** Dirty runs [first, end) starting at or after `from`. */
  *runs(from = 0): Generator<[number, number]> {
    let r = this.nextDirty(from);
    while (r >= 0) {
      const end = this.nextClean(r);
      yield [r, end];
      r = end < this.regions ? this.nextDirty(end) : -1;
    }
  }

  /** Dirty regions in [a, b): whole pages by count, partial pages by word popcount. */
  countRange(a: number, b: number): number {
    a = Math.max(0, a);
    b = Math.min(this.regions, b);
    let n = 0;
    for (let r = a; r < b;) {
      const p = Math.floor(r / PAGE_BITS),
        base = p * PAGE_BITS;
      const end = Math.min(b, base + this.pageBits(p));
      const c = this.counts[p],
        page = this.pages[p];
      if (c === 0 || !page)
        n += c === 0 ? 0 : end - r; // clean, or full
      else if (r === base && end === base + this.pageBits(p)) n += c;
      else {
        for (let i = r - base; i < end - base;) {
          if ((i & 31) === 0 && i + 32 <= end - base) {
            n += popcount(page[i >>> 5]);
            i += 32;
          } else {
            if (page[i >>> 5] & (1 << (i & 31))) n++;
            i++;
          }
        }
      }
      r = end;
    }
    return n;
  }

  /** Fraction of dirty regions in each of `buckets` equal slices: the dashboard's heat map. */
  density(buckets: number): number[] {
    const k = Math.max(1, Math.min(buckets, this.regions));
    const out: number[] = [];
    for (let i = 0; i < k; i++) {
      const a = Math.floor((i * this.regions) / k),
        b = Math.floor(((i + 1) * this.regions) / k);
      out.push(b > a ? this.countRange(a, b) / (b - a) : 0);
    }
    return out;
  }

  /**
   * The hub's recovery bitmap: a bit cleared because data reached the recovery volume's page
   * cache stays dirty in the persisted form (pageImage) until a flush that began after the clear
   * has completed, so no commit of other marks (a dirty report, a write fault) makes it clean on
   * disk ahead of its data. Marks before data, clears after it.
   */
  holdClearsUntilFlush(): void {
    this.held ??= [];
  }

  /** A data flush begins: it covers the clears made so far. Pass the result to flushed(). */
  beginFlush(): number {
    return this.epoch++;
  }

  /** The flush begun as `epoch` completed: the clears it covers may be persisted. */
  flushed(epoch: number): void {
    const held = this.held;
    if (!held) return;
    while (held.length > 0 && held[0].epoch <= epoch) {
      const { mask } = held.shift()!;
      for (let p = 0; p < mask.pages.length; p++) if (mask.counts[p] > 0) this.changed.add(p);
    }
  }

  /** Regions cleared but not yet covered by a flush (for tests and status). */
  get heldClears(): number {
    let n = 0;
    for (const h of this.held ?? []) n += h.mask.dirtyRegions;
    return n;
  }

  private holdClears(p: number, lo: number, hi: number): void {
    const held = this.held!;
    let last = held[held.length - 1];
    if (!last || last.epoch !== this.epoch) {
      if (held.length >= MAX_HELD_EPOCHS)
        last.epoch = this.epoch; // later: covered by a later flush only
      else held.push((last = { epoch: this.epoch, mask: new DirtyBitmap(this.sizeBytes, this.regionSize) }));
    }
    const base = p * PAGE_BITS;
    if (this.counts[p] === this.pageBits(p)) return last.mask.setRegions(base + lo, base + hi);
    for (let r = this.nextDirty(base + lo); r >= 0 && r <= base + hi;) {
      const end = Math.min(this.nextClean(r), base + hi + 1);
      last.mask.setRegions(r, end - 1);
      r = end <= base + hi ? this.nextDirty(end) : -1;
    }
  }

  takeChangedPages(): number[] {
    const c = [...this.changed];
    this.changed = new Set();
    return c;
  }

  /** Pages taken that the store failed to persist: the next save writes them again. */
  returnChangedPages(pages: number[]): void {
    for (const p of pages) this.changed.add(p);
  }

  /**
   * Persisted form of one page: empty buffer = clean, 1 byte 0xff = full, else the bits. With
   * clears held until a flush, those regions are still dirty here.
   */
  pageImage(p: number): Buffer {
    const held = this.held;
    if (held && held.some((h) => h.mask.counts[p] > 0)) {
      const u = new DirtyBitmap(this.sizeBytes, this.regionSize);
      for (const bm of [this, ...held.map((h) => h.mask)]) u.orPage(bm, p);
      return u.pageImage(p);
    }
    const c = this.counts[p];
    if (c === 0) return Buffer.alloc(0);
    const page = this.pages[p];
    if (!page) return Buffer.from([0xff]);
    return Buffer.from(page.buffer, page.byteOffset, page.byteLength);
  }

  /** This page |= page p of `o` (same geometry). */
  private orPage(o: DirtyBitmap, p: number): void {
    const c = o.counts[p];
    if (c === 0) return;
    const base = p * PAGE_BITS,
      page = o.pages[p];
    if (!page) return this.setRegions(base, base + o.pageBits(p) - 1);
    for (let w = 0; w < WORDS; w++) {
      const v = page[w];
      if (v !== 0) for (let b = 0; b < 32; b++) if (v & (1 << b)) this.setRegions(base + w * 32 + b, base + w * 32 + b);
    }
  }

  loadPage(p: number, img: Buffer): void {
    if (p < 0 || p >= this.pages.length) throw new RangeError(`page ${p} out of range`);
    const bits = this.pageBits(p);
    this.total -= this.counts[p];
    if (img.length === 0) {
      this.pages[p] = undefined;
      this.counts[p] = 0;
    } else if (img.length === 1) {
      this.pages[p] = undefined;
      this.counts[p] = bits;
    } else {
      if (img.length !== WORDS * 4) throw new RangeError(`page image of ${img.length} bytes`);
      const page = new Uint32Array(WORDS);
      Buffer.from(page.buffer).set(img);
      if (bits < PAGE_BITS) clearTail(page, bits);
      let c = 0;
      for (let w = 0; w < WORDS; w++) c += popcount(page[w]);
      this.pages[p] = c === 0 || c === bits ? undefined : page;
      this.counts[p] = c;
    }
    this.total += this.counts[p];
  }
}

function fillBits(page: Uint32Array, lo: number, hi: number): void {
  for (let w = lo >>> 5; w <= hi >>> 5; w++)
    page[w] |= wordMask(w === lo >>> 5 ? lo & 31 : 0, w === hi >>> 5 ? hi & 31 : 31);
}
function clearTail(page: Uint32Array, bits: number): void {
  for (let i = bits; i < PAGE_BITS; i++) page[i >>> 5] &= ~(1 << (i & 31));
}
/** Bits lo..hi (0..31) of a word set. */
function wordMask(lo: number, hi: number): number {
  const upTo = hi === 31 ? -1 : (1 << (hi + 1)) - 1;
  return upTo & ~((1 << lo) - 1);
}

function popcount(v: number): number {
  v = v - ((v >>> 1) & 0x55555555);
  v = (v & 0x33333333) + ((v >>> 2) & 0x33333333);
  return (((v + (v >>> 4)) & 0x0f0f0f0f) * 0x01010101) >>> 24;
}
