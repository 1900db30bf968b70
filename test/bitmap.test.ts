// DirtyBitmap against a plain boolean-array model, plus targeted checks of the paging
// (memory), the persisted page images and the constructor's validation.
import { strict as assert } from 'node:assert';
import fc from 'fast-check';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { DirtyBitmap, PAGE_BITS } from '../storage/bitmap';
import { DirtyLog } from '../storage/dirty-log';

const RS = 4096;
const PAGE_BYTES = PAGE_BITS / 8;

// ---------------------------------------------------------------------------------------
// model

type Op =
  | { k: 'set'; a: number; b: number }
  | { k: 'clear'; a: number; b: number }
  | { k: 'bytes'; s: number; e: number }
  | { k: 'scatter'; base: number; offs: number[]; dirty: boolean }
  | { k: 'all' }
  | { k: 'none' }
  | { k: 'roundtrip'; target: 'empty' | 'full' | 'range'; raw: boolean; a: number; b: number };

interface Scenario {
  regions: number;
  tail: number; // bytes in the last region, 1..RS
  ops: Op[];
  froms: number[];
}

/** Region indexes that sit on or next to page boundaries and the ends of the volume. */
function edges(n: number): number[] {
  const out = new Set<number>([0, 1, 31, 32, 33, n - 2, n - 1]);
  for (let p = PAGE_BITS; p < n + PAGE_BITS; p += PAGE_BITS) for (const d of [-33, -32, -1, 0, 1, 32]) out.add(p + d);
  return [...out].filter((r) => r >= 0 && r < n).sort((x, y) => x - y);
}

function scenarioArb(): fc.Arbitrary<Scenario> {
  const regionsArb = fc.oneof(
    { arbitrary: fc.integer({ min: 1, max: 300 }), weight: 1 },
    {
      arbitrary: fc.constantFrom(
        PAGE_BITS - 1,
        PAGE_BITS,
        PAGE_BITS + 1,
        2 * PAGE_BITS,
        2 * PAGE_BITS + 33,
        3 * PAGE_BITS - 1,
        3 * PAGE_BITS + 1,
      ),
      weight: 2,
    },
    { arbitrary: fc.integer({ min: PAGE_BITS + 1, max: 100_000 }), weight: 2 },
  );
  const tailArb = fc.oneof(fc.constant(RS), fc.integer({ min: 1, max: RS }));
  return fc.tuple(regionsArb, tailArb).chain(([n, tail]) => {
    const size = (n - 1) * RS + tail;
    const idx = fc.oneof(fc.integer({ min: 0, max: n - 1 }), fc.constantFrom(...edges(n)));
    const range = fc.tuple(idx, idx).map(([x, y]) => (x <= y ? [x, y] : [y, x]) as [number, number]);
    const byte = fc.oneof(
      fc.integer({ min: 0, max: size }),
      idx.map((r) => r * RS),
      idx.map((r) => Math.min(size, r * RS + 1)),
      idx.map((r) => Math.max(0, r * RS - 1)),
      fc.constant(size),
    );
    const op: fc.Arbitrary<Op> = fc.oneof(
      { arbitrary: range.map(([a, b]): Op => ({ k: 'set', a, b })), weight: 4 },
      { arbitrary: range.map(([a, b]): Op => ({ k: 'clear', a, b })), weight: 4 },
      { arbitrary: fc.tuple(byte, byte).map(([s, e]): Op => ({ k: 'bytes', s, e })), weight: 3 },
      {
        arbitrary: fc
          .tuple(idx, fc.array(fc.integer({ min: 0, max: 80 }), { minLength: 1, maxLength: 24 }), fc.boolean())
          .map(([base, offs, dirty]): Op => ({ k: 'scatter', base, offs, dirty })),
        weight: 3,
      },
      { arbitrary: fc.constant<Op>({ k: 'all' }), weight: 1 },
      { arbitrary: fc.constant<Op>({ k: 'none' }), weight: 1 },
      {
        arbitrary: fc
          .tuple(fc.constantFrom<'empty' | 'full' | 'range'>('empty', 'full', 'range'), fc.boolean(), range)
          .map(([target, raw, [a, b]]): Op => ({ k: 'roundtrip', target, raw, a, b })),
        weight: 2,
      },
    );
    return fc.record({
      regions: fc.constant(n),
      tail: fc.constant(tail),
      ops: fc.array(op, { minLength: 1, maxLength: 18 }),
      froms: fc.array(idx, { minLength: 1, maxLength: 8 }),
    });
  });
}

function modelApply(m: Uint8Array, a: number, b: number, v: number): void {
  m.fill(v, a, b + 1);
}

function modelRuns(m: Uint8Array, from: number): [number, number][] {
  const out: [number, number][] = [];
  let r = Math.max(0, from);
  while (r < m.length) {
    if (!m[r]) {
      r++;
      continue;
    }
    const s = r;
    while (r < m.length && m[r]) r++;
    out.push([s, r]);
  }
  return out;
}

/** A copy of page p's image, as a state store would keep it. */
function image(bm: DirtyBitmap, p: number, raw: boolean): Buffer {
  const img = Buffer.from(bm.pageImage(p));
  if (!raw) return img;
  // expanded to a full 4 KiB bit image, as the agent's dirty log stores every page
  if (img.length === 0) return Buffer.alloc(PAGE_BYTES);
  if (img.length === 1) return Buffer.alloc(PAGE_BYTES, 0xff);
  return img;
}

function check(bm: DirtyBitmap, m: Uint8Array, tail: number, froms: number[], ctx: string): void {
  const n = m.length;
  assert.equal(bm.regions, n, `${ctx}: regions`);
  let count = 0;
  for (let r = 0; r < n; r++) {
    if (bm.get(r) !== (m[r] === 1)) assert.fail(`${ctx}: get(${r}) = ${bm.get(r)}, model ${m[r] === 1}`);
    count += m[r];
  }
  assert.equal(bm.dirtyRegions, count, `${ctx}: dirtyRegions`);
  let bytes = 0;
  for (let r = 0; r < n; r++) if (m[r]) bytes += r === n - 1 ? tail : RS;
  assert.equal(bm.dirtyBytes, bytes, `${ctx}: dirtyBytes`);

  // canonical paging: empty page -> no image, full page -> 1 byte, else the 4 KiB of bits
  for (let p = 0; p < bm.pageCount; p++) {
    const lo = p * PAGE_BITS,
      hi = Math.min(n, lo + PAGE_BITS);
    let c = 0;
    for (let r = lo; r < hi; r++) c += m[r];
    const img = bm.pageImage(p);
    const want = c === 0 ? 0 : c === hi - lo ? 1 : PAGE_BYTES;
    assert.equal(img.length, want, `${ctx}: pageImage(${p}) length with ${c}/${hi - lo} dirty`);
  }

  // next dirty / clean from the model
  const nextD = new Int32Array(n + 1),
    nextC = new Int32Array(n + 1);
  nextD[n] = -1;
  nextC[n] = n;
  for (let r = n - 1; r >= 0; r--) {
    nextD[r] = m[r] ? r : nextD[r + 1];
    nextC[r] = m[r] ? nextC[r + 1] : r;
  }
  for (const f of [...edges(n), ...froms]) {
    assert.equal(bm.nextDirty(f), nextD[f], `${ctx}: nextDirty(${f})`);
    assert.equal(bm.nextClean(f), nextC[f], `${ctx}: nextClean(${f})`);
  }
  assert.deepEqual([...bm.runs()], modelRuns(m, 0), `${ctx}: runs()`);
  const f = froms[0];
  assert.deepEqual([...bm.runs(f)], modelRuns(m, f), `${ctx}: runs(${f})`);
}

describe('DirtyBitmap', () => {
  it('matches a boolean-array model over random operation sequences (several pages, partial last page)', () => {
    fc.assert(
      fc.property(scenarioArb(), ({ regions: n, tail, ops, froms }) => {
        const size = (n - 1) * RS + tail;
        let bm = new DirtyBitmap(size, RS);
        const m = new Uint8Array(n);
        check(bm, m, tail, froms, 'initial');
        let taken = Uint8Array.from(m); // model as of the last takeChangedPages()
        bm.takeChangedPages();
        ops.forEach((op, i) => {
          const ctx = `op ${i} ${JSON.stringify(op)}`;
          switch (op.k) {
            case 'set':
              bm.setRegions(op.a, op.b);
              modelApply(m, op.a, op.b, 1);
              break;
            case 'clear':
              bm.clearRegions(op.a, op.b);
              modelApply(m, op.a, op.b, 0);
              break;
            case 'bytes':
              bm.setBytes(op.s, op.e);
              if (op.e > op.s) modelApply(m, Math.floor(op.s / RS), Math.floor((op.e - 1) / RS), 1);
              break;
            case 'scatter':
              for (const o of op.offs) {
                const r = Math.min(n - 1, op.base + o);
                if (op.dirty) bm.setRegions(r, r);
                else bm.clearRegions(r, r);
                m[r] = op.dirty ? 1 : 0;
              }
              break;
            case 'all':
              bm.setAll();
              m.fill(1);
              break;
            case 'none':
              bm.clearRegions(0, n - 1);
              m.fill(0);
              break;
            case 'roundtrip': {
              // persist every page, then load them into a bitmap that starts in some other state
              const imgs = Array.from({ length: bm.pageCount }, (_, p) => image(bm, p, op.raw));
              const next = new DirtyBitmap(size, RS);
              if (op.target === 'full') next.setAll();
              if (op.target === 'range') next.setRegions(op.a, op.b);
              imgs.forEach((img, p) => next.loadPage(p, img));
              bm = next;
              break;
            }
          }
          check(bm, m, tail, froms, ctx);
          // every page whose bits changed since the last take must be reported as changed
          const changed = new Set(bm.takeChangedPages());
          if (op.k !== 'roundtrip') {
            for (let p = 0; p < bm.pageCount; p++) {
              const lo = p * PAGE_BITS,
                hi = Math.min(n, lo + PAGE_BITS);
              let differs = false;
              for (let r = lo; r < hi && !differs; r++) differs = m[r] !== taken[r];
              if (differs) assert.ok(changed.has(p), `${ctx}: page ${p} changed but not in takeChangedPages()`);
            }
          }
          taken = Uint8Array.from(m);
        });
      }),
      { numRuns: 120 },
    );
  });

  it('rejects region ranges outside the volume without changing anything', () => {
    const bm = new DirtyBitmap(10 * RS, RS);
    bm.setRegions(2, 3);
    for (const [a, b] of [
      [0, 10],
      [-1, 0],
      [5, 4],
      [10, 10],
    ]) {
      assert.throws(() => bm.setRegions(a, b), RangeError, `setRegions(${a}, ${b})`);
      assert.throws(() => bm.clearRegions(a, b), RangeError, `clearRegions(${a}, ${b})`);
    }
    assert.throws(() => bm.setBytes(0, 10 * RS + 1), RangeError);
    assert.deepEqual([...bm.runs()], [[2, 4]]);
    assert.equal(bm.dirtyRegions, 2);
  });

  it('nextDirty(from) for from at or past the last region returns -1, also when the last page is full', () => {
    for (const regions of [10, PAGE_BITS, PAGE_BITS + 5]) {
      const bm = new DirtyBitmap(regions * RS, RS);
      bm.setAll();
      assert.equal(bm.nextDirty(regions - 1), regions - 1);
      for (const f of [regions, regions + 1, Math.ceil(regions / PAGE_BITS) * PAGE_BITS - 1]) {
        if (f < regions) continue;
        assert.equal(bm.nextDirty(f), -1, `regions=${regions} nextDirty(${f})`);
      }
      assert.equal(bm.nextClean(regions), regions);
      assert.deepEqual([...bm.runs(regions)], []);
    }
  });

  describe('memory', () => {
    const TiB = 2 ** 40,
      RS64 = 64 * 1024;

    it('a fully dirty 1 TiB volume at 64 KiB regions holds no pages (< 8 KiB)', () => {
      const bm = new DirtyBitmap(TiB, RS64);
      assert.equal(bm.regions, 2 ** 24);
      bm.setAll();
      assert.equal(bm.dirtyRegions, 2 ** 24);
      assert.equal(bm.dirtyBytes, TiB);
      assert.ok(bm.memoryBytes < 8192, `memoryBytes ${bm.memoryBytes}`);
      // also when it got fully dirty piece by piece, half a page at a time
      const bm2 = new DirtyBitmap(TiB, RS64);
      for (let r = 0; r < bm2.regions; r += PAGE_BITS / 2) bm2.setRegions(r, r + PAGE_BITS / 2 - 1);
      assert.equal(bm2.dirtyRegions, 2 ** 24);
      assert.ok(bm2.memoryBytes < 8192, `memoryBytes ${bm2.memoryBytes} after half-page steps`);
      // and when it is cleaned again
      bm2.clearRegions(0, bm2.regions - 1);
      assert.equal(bm2.dirtyRegions, 0);
      assert.ok(bm2.memoryBytes < 8192, `memoryBytes ${bm2.memoryBytes} after clearing`);
    });

    it('half-dirty pages are materialized, and collapse again once whole', () => {
      const bm = new DirtyBitmap(TiB, RS64);
      const base = bm.memoryBytes;
      assert.ok(base < 8192);
      for (let p = 0; p < 10; p++) bm.setRegions(p * PAGE_BITS, p * PAGE_BITS + PAGE_BITS / 2 - 1);
      assert.equal(bm.memoryBytes, base + 10 * PAGE_BYTES);
      assert.equal(bm.dirtyRegions, (10 * PAGE_BITS) / 2);
      for (let p = 0; p < 10; p++) assert.equal(bm.pageImage(p).length, PAGE_BYTES);
      // every other bit of a full page: materialized
      bm.setAll();
      assert.equal(bm.memoryBytes, base);
      for (let r = 20 * PAGE_BITS; r < 21 * PAGE_BITS; r += 2) bm.clearRegions(r, r);
      assert.equal(bm.memoryBytes, base + PAGE_BYTES);
      assert.equal(bm.dirtyRegions, 2 ** 24 - PAGE_BITS / 2);
      for (let r = 20 * PAGE_BITS; r < 21 * PAGE_BITS; r += 2) bm.setRegions(r, r);
      assert.equal(bm.memoryBytes, base);
      assert.equal(bm.dirtyRegions, 2 ** 24);
    });
  });

  describe('pageImage / loadPage', () => {
    // 3 pages, the last one 1000 regions long; 100 bytes in the last region
    const REGIONS = 2 * PAGE_BITS + 1000;
    const SIZE = (REGIONS - 1) * RS + 100;

    function fresh(): DirtyBitmap {
      return new DirtyBitmap(SIZE, RS);
    }
    function same(a: DirtyBitmap, b: DirtyBitmap): void {
      assert.equal(b.dirtyRegions, a.dirtyRegions);
      assert.equal(b.dirtyBytes, a.dirtyBytes);
      assert.deepEqual([...b.runs()], [...a.runs()]);
      for (let p = 0; p < a.pageCount; p++) assert.deepEqual(b.pageImage(p), a.pageImage(p), `page ${p}`);
    }

    it('images: clean page = empty, full page = [0xff], partial page = its 4 KiB of bits', () => {
      const bm = fresh();
      bm.setRegions(0, PAGE_BITS - 1); // page 0 full
      bm.setRegions(PAGE_BITS + 3, PAGE_BITS + 3); // page 1 one bit
      bm.setRegions(PAGE_BITS + 40, PAGE_BITS + 71); // and one whole word
      // page 2 (partial last page) clean
      assert.deepEqual(bm.pageImage(0), Buffer.from([0xff]));
      assert.equal(bm.pageImage(2).length, 0);
      const img = bm.pageImage(1);
      assert.equal(img.length, PAGE_BYTES);
      const want = Buffer.alloc(PAGE_BYTES);
      want[0] = 1 << 3;
      want.fill(0xff, 5, 9);
      assert.deepEqual(Buffer.from(img), want);
      // last page full
      bm.setRegions(2 * PAGE_BITS, REGIONS - 1);
      assert.deepEqual(bm.pageImage(2), Buffer.from([0xff]));
      assert.equal(bm.dirtyBytes, (PAGE_BITS + 1 + 32 + 999) * RS + 100);
    });

    it('round trip of full, empty and partial pages into a fresh bitmap and over a dirty one', () => {
      const bm = fresh();
      bm.setRegions(0, PAGE_BITS - 1);
      for (let r = PAGE_BITS; r < 2 * PAGE_BITS; r += 7) bm.setRegions(r, r);
      bm.setRegions(REGIONS - 3, REGIONS - 1); // partial last page incl. the partial last region
      const imgs = Array.from({ length: bm.pageCount }, (_, p) => Buffer.from(bm.pageImage(p)));
      for (const start of ['clean', 'dirty'] as const) {
        const b = fresh();
        if (start === 'dirty') b.setAll();
        imgs.forEach((img, p) => b.loadPage(p, img));
        same(bm, b);
      }
      // now page 0 clean, page 1 full, last page full
      bm.clearRegions(0, PAGE_BITS - 1);
      bm.setRegions(PAGE_BITS, REGIONS - 1);
      const b = fresh();
      b.setRegions(5, 5);
      for (let p = 0; p < bm.pageCount; p++) b.loadPage(p, Buffer.from(bm.pageImage(p)));
      same(bm, b);
      assert.equal(b.get(5), false);
      assert.equal(b.dirtyRegions, REGIONS - PAGE_BITS);
    });

    it('a raw all-ones image of the partial last page counts only the regions that exist', () => {
      const b = fresh();
      b.loadPage(2, Buffer.alloc(PAGE_BYTES, 0xff));
      assert.equal(b.dirtyRegions, 1000);
      assert.deepEqual([...b.runs()], [[2 * PAGE_BITS, REGIONS]]);
      assert.deepEqual(b.pageImage(2), Buffer.from([0xff]));
      assert.equal(b.dirtyBytes, 999 * RS + 100);
      b.loadPage(2, Buffer.alloc(PAGE_BYTES)); // raw all-zero image
      assert.equal(b.dirtyRegions, 0);
      assert.equal(b.pageImage(2).length, 0);
    });

    it('rejects images of the wrong length and pages out of range', () => {
      const b = fresh();
      assert.throws(() => b.loadPage(0, Buffer.alloc(100)), RangeError);
      assert.throws(() => b.loadPage(3, Buffer.alloc(0)), RangeError);
      assert.throws(() => b.loadPage(-1, Buffer.alloc(0)), RangeError);
    });
  });

  it('constructor accepts only power-of-two region sizes in 4 KiB..1 MiB', () => {
    for (let s = 4096; s <= 1 << 20; s *= 2) {
      const bm = new DirtyBitmap(10 * s + 1, s);
      assert.equal(bm.regionSize, s);
      assert.equal(bm.regions, 11);
    }
    for (const s of [
      0,
      -4096,
      1,
      512,
      2048,
      4095,
      4097,
      6144,
      12288,
      3 << 16,
      (1 << 20) - 1,
      (1 << 20) + 4096,
      1 << 21,
      1 << 30,
      4096.5,
      NaN,
      Infinity,
    ]) {
      assert.throws(() => new DirtyBitmap(1 << 30, s), RangeError, `region size ${s}`);
    }
    for (const size of [-1, 1.5, NaN, Infinity, 2 ** 53]) {
      assert.throws(() => new DirtyBitmap(size, 4096), RangeError, `volume size ${size}`);
    }
    const empty = new DirtyBitmap(0, 4096);
    assert.equal(empty.regions, 0);
    empty.setAll();
    assert.equal(empty.dirtyRegions, 0);
    assert.equal(empty.nextDirty(0), -1);
    assert.deepEqual([...empty.runs()], []);
  });

  it('a 64 TiB volume at 64 KiB regions (2^30 regions): finds one dirty region near the end', () => {
    const bm = new DirtyBitmap(2 ** 46, 64 * 1024);
    const n = 2 ** 30;
    assert.equal(bm.regions, n);
    const r = n - 40;
    bm.setRegions(r, r);
    assert.equal(bm.get(r), true);
    assert.equal(bm.get(r - 1), false);
    assert.equal(bm.nextDirty(0), r);
    assert.equal(bm.nextDirty(r + 1), -1);
    assert.equal(bm.nextClean(r), r + 1);
    assert.deepEqual([...bm.runs()], [[r, r + 1]]);
    assert.equal(bm.dirtyBytes, 64 * 1024);
    // and the reverse: everything dirty but one region near the end
    bm.setAll();
    bm.clearRegions(r, r);
    assert.equal(bm.nextClean(0), r);
    assert.equal(bm.nextDirty(r), r + 1);
    assert.deepEqual(
      [...bm.runs()],
      [
        [0, r],
        [r + 1, n],
      ],
    );
  });

  it('a 32 TiB volume at 4 KiB regions (2^33 regions): region indexes above 2^32 do not alias low ones', () => {
    const bm = new DirtyBitmap(2 ** 45, 4096);
    const n = 2 ** 33;
    assert.equal(bm.regions, n);
    const r = 2 ** 32 + 5;
    bm.setRegions(r, r);
    assert.equal(bm.dirtyRegions, 1);
    assert.equal(bm.get(5), false, 'region 5 was never set');
    assert.equal(bm.get(r), true);
    assert.equal(bm.nextDirty(0), r);
    assert.deepEqual([...bm.runs()], [[r, r + 1]]);
  });
});

describe('DirtyBitmap.countRange / density (dashboard heat map)', () => {
  it('countRange equals a per-region count over random patterns and ranges', () => {
    fc.assert(
      fc.property(
        fc.integer({ min: 1, max: 70000 }),
        fc.array(fc.tuple(fc.nat(70000), fc.nat(40000), fc.boolean()), { maxLength: 12 }),
        fc.nat(70000),
        fc.nat(70000),
        (regions, ops, x, y) => {
          const bm = new DirtyBitmap(regions * 4096, 4096);
          for (const [a, len, set] of ops) {
            const first = a % regions,
              last = Math.min(regions - 1, first + len);
            if (set) bm.setRegions(first, last);
            else bm.clearRegions(first, last);
          }
          const a = Math.min(x, y) % (regions + 1),
            b = Math.min(regions, Math.max(x, y));
          let n = 0;
          for (let r = a; r < b; r++) if (bm.get(r)) n++;
          assert.equal(bm.countRange(a, b), n);
          const d = bm.density(17);
          assert.equal(d.length, Math.min(17, regions));
          assert.ok(d.every((v) => v >= 0 && v <= 1));
        },
      ),
      { numRuns: 200 },
    );
  });
});

describe('DirtyBitmap.grow and DirtyLog.grow (online resize)', () => {
  it('old bits are kept, new regions start clean, a full last page stays exact; persisted images agree', () => {
    fc.assert(
      fc.property(
        fc.integer({ min: 1, max: 3 * PAGE_BITS }),
        fc.integer({ min: 1, max: 2 * PAGE_BITS }),
        fc.array(fc.tuple(fc.nat(), fc.nat(), fc.boolean()), { maxLength: 8 }),
        (regions, more, ops) => {
          const bm = new DirtyBitmap(regions * RS - 512, RS); // a partial last region too
          const model: boolean[] = new Array(regions).fill(false);
          for (const [x, y, dirty] of ops) {
            const a = x % regions,
              b = a + (y % (regions - a));
            if (dirty) bm.setRegions(a, b);
            else bm.clearRegions(a, b);
            for (let r = a; r <= b; r++) model[r] = dirty;
          }
          if (ops.length === 0) bm.setAll(); // the "full last page as a count" case
          if (ops.length === 0) model.fill(true);
          bm.grow((regions + more) * RS);
          assert.equal(bm.regions, regions + more);
          for (let r = 0; r < regions + more; r++) assert.equal(bm.get(r), r < regions && model[r], `region ${r}`);
          assert.equal(bm.dirtyRegions, model.filter(Boolean).length);
          const copy = new DirtyBitmap(bm.sizeBytes, RS);
          for (let p = 0; p < bm.pageCount; p++) copy.loadPage(p, bm.pageImage(p));
          for (let r = 0; r < bm.regions; r++) assert.equal(copy.get(r), bm.get(r), `persisted region ${r}`);
        },
      ),
      { numRuns: 60 },
    );
  });

  it('a grown dirty log reopens at the new size with its old bits and clean new regions', () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'rephub-grow-'));
    const file = path.join(dir, 'V1.dlog');
    try {
      const size = PAGE_BITS * RS; // one full page of regions
      const log = DirtyLog.open(file, size, RS); // fresh: all dirty
      log.grow(size + 8 * RS);
      log.sync(true);
      log.close();
      const again = DirtyLog.open(file, size + 8 * RS, RS);
      assert.equal(again.fresh, false, 'the header names the new size');
      assert.equal(again.bitmap.countRange(0, PAGE_BITS), PAGE_BITS);
      assert.equal(again.bitmap.countRange(PAGE_BITS, PAGE_BITS + 8), 0, 'the new regions are clean');
      again.close();
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });
});
