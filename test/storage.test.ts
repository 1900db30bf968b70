// Storage: FileVolume (and MemoryVolume's parity with it), the hub's LMDB state store and the
// agent's persistent dirty log.
import { strict as assert } from 'node:assert';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { randomBytes } from 'node:crypto';
import { open } from 'lmdb';
import { BlockTarget, FileVolume, MemoryVolume, VolumeError, DIRECT_ALIGN } from '../storage/volume';
import { BufferPool } from '../src/buffer-pool';
import { dropCache } from '../storage/fileio';
import { LmdbStateStore, MemoryStateStore, VolumeRecord } from '../storage/state';
import type { StateStore } from '../storage/state';
import { DirtyBitmap, PAGE_BITS } from '../storage/bitmap';
import { DirtyLog } from '../storage/dirty-log';
import { tmpdir } from './harness/util';
// the real module object (not the import-star wrapper), so a test can intercept its functions
import realFs = require('node:fs');

const MiB = 1 << 20;
const PAGE_BYTES = PAGE_BITS / 8;

async function rejectsWithVolumeError(p: Promise<unknown>, what: string): Promise<VolumeError> {
  let err: unknown;
  await p.then(
    () => assert.fail(`${what}: resolved, expected a VolumeError`),
    (e) => (err = e),
  );
  assert.ok(err instanceof VolumeError, `${what}: rejected with ${err}, expected a VolumeError`);
  return err as VolumeError;
}

describe('FileVolume', () => {
  let dir: string;
  const vols: FileVolume[] = [];
  beforeEach(() => (dir = tmpdir()));
  afterEach(async () => {
    for (const v of vols.splice(0)) await v.close();
    fs.rmSync(dir, { recursive: true, force: true });
  });
  function openVol(p: string, opts?: Parameters<typeof FileVolume.open>[1]): FileVolume {
    const v = FileVolume.open(p, opts);
    vols.push(v);
    return v;
  }

  it('creates a missing file sparse at createSize', () => {
    const p = path.join(dir, 'rep.img');
    const size = 1 << 30;
    const v = openVol(p, { createSize: size, minSize: size });
    assert.equal(v.sizeBytes, size);
    const st = fs.statSync(p);
    assert.equal(st.size, size);
    // 512-byte blocks actually allocated: a sparse file has (almost) none
    assert.ok(st.blocks * 512 <= 64 * 1024, `${st.blocks} blocks allocated for a new sparse file`);
  });

  it("writev lands pieces back to back, even past the kernel's iovec limit (short writes resume)", async () => {
    const v = openVol(path.join(dir, 'g.img'), { createSize: 4 * MiB });
    const parts = Array.from({ length: 1500 }, (_, i) => randomBytes(i % 3 === 0 ? 512 : 1536)); // IOV_MAX is 1024
    const all = Buffer.concat(parts);
    await v.writev(parts, 4096);
    const back = Buffer.alloc(all.length);
    await v.read(back, 4096);
    assert.ok(back.equals(all));
    await assert.rejects(v.writev([Buffer.alloc(4096)], 4 * MiB - 512), /outside/);
  });

  it('dataExtents names the data runs of a sparse file and nothing in its holes', () => {
    const p = path.join(dir, 's.img');
    const v = openVol(p, { createSize: 8 * MiB });
    const fd = fs.openSync(p, 'r+');
    fs.writeSync(fd, randomBytes(64 * 1024), 0, 64 * 1024, 1 * MiB);
    fs.writeSync(fd, randomBytes(64 * 1024), 0, 64 * 1024, 5 * MiB);
    fs.closeSync(fd);
    const ext = v.dataExtents(0, 8 * MiB)!;
    assert.ok(ext, 'SEEK_DATA works here (native addon built)');
    assert.equal(ext.length, 2, JSON.stringify(ext));
    assert.ok(ext[0][0] <= 1 * MiB && ext[0][1] >= 1 * MiB + 65536 && ext[0][1] <= 2 * MiB, JSON.stringify(ext));
    assert.ok(ext[1][0] >= 2 * MiB && ext[1][0] <= 5 * MiB && ext[1][1] >= 5 * MiB + 65536, JSON.stringify(ext));
    assert.deepEqual(v.dataExtents(2 * MiB, 4 * MiB), [], 'a hole');
    assert.deepEqual(
      v.dataExtents(5 * MiB + 4096, 5 * MiB + 8192),
      [[5 * MiB + 4096, 5 * MiB + 8192]],
      'clipped to the range',
    );
  });

  it('opens an existing file at its own size: createSize neither truncates nor extends it', async () => {
    const p = path.join(dir, 'rep.img');
    const data = randomBytes(3 * MiB);
    fs.writeFileSync(p, data);
    const v = openVol(p, { createSize: 2 * MiB });
    assert.equal(v.sizeBytes, 3 * MiB);
    assert.equal(fs.statSync(p).size, 3 * MiB);
    const back = Buffer.alloc(3 * MiB);
    await v.read(back, 0);
    assert.ok(back.equals(data));
  });

  it('refuses an existing file smaller than minSize, naming both sizes, and leaves it alone', () => {
    const p = path.join(dir, 'rep.img');
    fs.writeFileSync(p, Buffer.alloc(MiB, 7));
    let err: unknown;
    try {
      openVol(p, { createSize: 2 * MiB, minSize: 2 * MiB });
    } catch (e) {
      err = e;
    }
    assert.ok(err instanceof VolumeError, `expected a VolumeError, got ${err}`);
    assert.match(err.message, /\b1048576\b/);
    assert.match(err.message, /\b2097152\b/);
    assert.equal(err.path, p);
    assert.equal(fs.statSync(p).size, MiB);
    // one byte short is refused too, exactly minSize is fine
    assert.throws(() => openVol(p, { minSize: MiB + 1 }), VolumeError);
    assert.equal(openVol(p, { minSize: MiB }).sizeBytes, MiB);
  });

  it('a missing file without createSize is a VolumeError with ENOENT', () => {
    const p = path.join(dir, 'nope.img');
    assert.throws(
      () => openVol(p),
      (e: unknown) => e instanceof VolumeError && e.errno === 'ENOENT' && e.path === p,
    );
    assert.equal(fs.existsSync(p), false);
  });

  it('read/write round trip at aligned and unaligned offsets, also after reopening', async () => {
    const p = path.join(dir, 'rep.img');
    const size = 8 * MiB;
    const v = openVol(p, { createSize: size });
    const writes: [number, Buffer][] = [
      [0, randomBytes(4096)],
      [3 * 4096 + 17, randomBytes(10_000)],
      [MiB - 100, randomBytes(300)], // across a MiB boundary
      [size - 65536, randomBytes(65536)], // up to the last byte
    ];
    for (const [off, buf] of writes) await v.write(buf, off);
    await v.flush();
    const check = async (vol: FileVolume) => {
      for (const [off, buf] of writes) {
        const back = Buffer.alloc(buf.length, 0xaa);
        await vol.read(back, off);
        assert.ok(back.equals(buf), `data at ${off}`);
      }
      // a read spanning written and never-written bytes
      const span = Buffer.alloc(8192, 0xaa);
      await vol.read(span, 4096 - 100);
      assert.ok(span.subarray(0, 100).equals(writes[0][1].subarray(4096 - 100)));
      assert.ok(span.subarray(100, 100 + 3 * 4096 + 17 - 4096).every((b) => b === 0));
    };
    await check(v);
    await v.close();
    await check(openVol(p));
    assert.equal(fs.statSync(p).size, size);
  });

  it('reading a region never written returns zeroes', async () => {
    const v = openVol(path.join(dir, 'rep.img'), { createSize: 4 * MiB });
    await v.write(Buffer.alloc(4096, 1), MiB);
    for (const off of [0, MiB + 4096, 4 * MiB - 65536]) {
      const buf = Buffer.alloc(65536, 0xaa);
      await v.read(buf, off);
      assert.ok(
        buf.every((b) => b === 0),
        `zeroes at ${off}`,
      );
    }
  });

  it('reads past the end of a file that shrank underneath it as zeroes', async () => {
    const p = path.join(dir, 'rep.img');
    const v = openVol(p, { createSize: 2 * MiB });
    await v.write(Buffer.alloc(MiB, 5), 0);
    fs.truncateSync(p, MiB - 10);
    const buf = Buffer.alloc(100, 0xaa);
    await v.read(buf, MiB - 50);
    assert.ok(buf.subarray(0, 40).every((b) => b === 5));
    assert.ok(buf.subarray(40).every((b) => b === 0));
  });

  it('IO outside the size rejects with VolumeError and does not grow the file', async () => {
    const p = path.join(dir, 'rep.img');
    const size = MiB;
    const v = openVol(p, { createSize: size });
    const cases: [number, number][] = [
      [size - 10, 20],
      [size, 1],
      [-1, 10],
      [-4096, 4096],
      [2 * size, 4096],
    ];
    for (const [off, len] of cases) {
      const e = await rejectsWithVolumeError(v.write(Buffer.alloc(len, 9), off), `write [${off}, +${len})`);
      assert.equal(e.offset, off);
      await rejectsWithVolumeError(v.read(Buffer.alloc(len), off), `read [${off}, +${len})`);
    }
    assert.equal(fs.statSync(p).size, size);
    const tail = Buffer.alloc(10, 0xaa);
    await v.read(tail, size - 10);
    assert.ok(
      tail.every((b) => b === 0),
      'the rejected write left nothing behind',
    );
  });

  it('a read-only volume rejects writes with VolumeError', async () => {
    const p = path.join(dir, 'rep.img');
    fs.writeFileSync(p, Buffer.alloc(MiB));
    const v = openVol(p, { readOnly: true });
    await rejectsWithVolumeError(v.write(Buffer.alloc(4096, 1), 0), 'write to a read-only volume');
    assert.ok(fs.readFileSync(p).every((b) => b === 0));
  });

  it('direct: large aligned writes go around the page cache, coherent with buffered reads and writes', async () => {
    const p = path.join(dir, 'rep.img');
    const v = openVol(p, { createSize: 8 * MiB, direct: true });
    const model = Buffer.alloc(8 * MiB);
    const pool = new BufferPool(MiB, 2, DIRECT_ALIGN);
    const put = async (b: Buffer, off: number) => {
      await v.write(b, off);
      b.copy(model, off);
    };
    const aligned = (fill: number) => {
      const b = pool.take(MiB, 0);
      randomBytes(MiB).copy(b);
      b[0] = fill;
      return b;
    };
    await put(randomBytes(4096), MiB + 8192); // a dirty cached page inside the next direct write
    await put(aligned(1), MiB);
    assert.equal(v.directBytes, MiB, 'aligned, 1 MiB: direct');
    const back = Buffer.alloc(MiB);
    await v.read(back, MiB);
    assert.ok(back.equals(model.subarray(MiB, 2 * MiB)), 'a buffered read sees the direct write, not the stale page');
    await put(randomBytes(4096), MiB + 4096); // buffered over direct
    await put(aligned(2).subarray(512, 512 + 512 * 1024), 4 * MiB); // misaligned memory: buffered
    await put(aligned(3), 3 * MiB + 512); // misaligned offset: buffered
    assert.equal(v.directBytes, MiB, 'only aligned memory, offset and length go direct');
    await put(aligned(4), 6 * MiB);
    assert.equal(v.directBytes, 2 * MiB);
    await v.flush();
    assert.ok(fs.readFileSync(p).equals(model), 'the file holds every write in order');
  });

  it('readBulk: cold ranges are read around the page cache, cached ones and unaligned buffers through it', async () => {
    const p = path.join(dir, 'img');
    const model = randomBytes(8 * MiB);
    fs.writeFileSync(p, model);
    const v = openVol(p);
    await v.flush();
    const raw = fs.openSync(p, 'r'); // advice is per file, not per descriptor
    dropCache(raw, 0, 0); // written back, then dropped: every page cold
    const pool = new BufferPool(MiB, 4, DIRECT_ALIGN);
    const bulk = async (off: number, len = MiB, skew = 0) => {
      const b = pool.take(len + skew).subarray(skew);
      await v.readBulk!(b, off);
      assert.ok(b.equals(model.subarray(off, off + len)), `bytes at ${off}`);
    };
    await bulk(0);
    assert.equal(v.directReadBytes, MiB, 'a cold, aligned 1 MiB read: direct');
    await v.read(Buffer.alloc(4096), 2 * MiB + 8192); // one page of the next range cached
    await bulk(2 * MiB);
    assert.equal(v.directReadBytes, MiB, 'a range with a cached page: through the cache');
    await bulk(4 * MiB, MiB - 4096, 512); // misaligned memory
    await bulk(5 * MiB, 32 * 1024); // under BULK_DIRECT_MIN
    assert.equal(v.directReadBytes, MiB, 'misaligned or small: through the cache');
    const dirty = randomBytes(MiB);
    await v.write(dirty, 6 * MiB); // dirty in the page cache
    dirty.copy(model, 6 * MiB);
    await bulk(6 * MiB);
    dropCache(raw, 7 * MiB, MiB);
    await bulk(7 * MiB);
    assert.equal(v.directReadBytes, 2 * MiB, 'the cached dirty range through the cache, the cold one direct');
    fs.closeSync(raw);
    await v.close();
    await rejectsWithVolumeError(v.readBulk!(Buffer.alloc(4096), 0), 'a bulk read after close');
  });
});

describe('MemoryVolume behaves like FileVolume (BlockTarget contract)', () => {
  let dir: string;
  beforeEach(() => (dir = tmpdir()));
  afterEach(() => fs.rmSync(dir, { recursive: true, force: true }));

  for (const kind of ['file', 'memory'] as const) {
    it(`${kind}: round trip, zeroes, and IO outside the size rejects with VolumeError`, async () => {
      const size = MiB;
      const v: BlockTarget =
        kind === 'file' ? FileVolume.open(path.join(dir, 'v.img'), { createSize: size }) : new MemoryVolume(size);
      try {
        const data = randomBytes(5000);
        await v.write(data, 12345);
        const back = Buffer.alloc(5000);
        await v.read(back, 12345);
        assert.ok(back.equals(data));
        const z = Buffer.alloc(4096, 0xaa);
        await v.read(z, 65536);
        assert.ok(z.every((b) => b === 0));
        for (const [off, len] of [
          [size - 10, 20],
          [size, 1],
          [-1, 10],
        ] as [number, number][]) {
          await rejectsWithVolumeError(v.write(Buffer.alloc(len), off), `${kind} write [${off}, +${len})`);
          await rejectsWithVolumeError(v.read(Buffer.alloc(len), off), `${kind} read [${off}, +${len})`);
        }
      } finally {
        await v.close();
      }
    });
  }
});

describe('LmdbStateStore', () => {
  let dir: string;
  let store: LmdbStateStore | undefined;
  beforeEach(() => (dir = tmpdir()));
  afterEach(async () => {
    await store?.close();
    store = undefined;
    fs.rmSync(dir, { recursive: true, force: true });
  });
  const reopen = async (): Promise<LmdbStateStore> => {
    await store?.close();
    return (store = new LmdbStateStore(path.join(dir, 'hub')));
  };
  const rec = (name: string, id: number, extra: Partial<VolumeRecord> = {}): VolumeRecord => ({
    name,
    id,
    sizeBytes: 16 * MiB + 512,
    regionSize: 65536,
    generation: 1,
    state: 'syncing',
    cleanShutdown: false,
    syncPass: 0,
    syncCursor: 0,
    ...extra,
  });

  it('putVolume / volume / volumes, durable and not, across reopen', async () => {
    let s = await reopen();
    assert.equal(s.volume('V1'), undefined);
    assert.deepEqual(s.volumes(), []);
    const a = rec('V1', 1, { vm: 'vm-a' }),
      b = rec('V10', 2, { state: 'protecting', syncCursor: 99 }),
      c = rec('data disk', 3);
    await s.putVolume(a, true);
    await s.putVolume(b, false);
    await s.putVolume(c, true);
    assert.deepEqual(s.volume('V1'), a);
    assert.deepEqual(s.volume('V10'), b);
    assert.equal(s.volume('V'), undefined);
    // update in place
    const a2 = { ...a, generation: 2, cleanShutdown: true, syncPass: 3, syncCursor: 1234 };
    await s.putVolume(a2, false);
    assert.deepEqual(s.volume('V1'), a2);
    s = await reopen();
    assert.deepEqual(s.volume('V1'), a2);
    assert.deepEqual(s.volume('V10'), b);
    const all = s.volumes().sort((x, y) => x.id - y.id);
    assert.deepEqual(all, [a2, b, c]);
  });

  it('volumes() lists every stored volume, whatever its name', async () => {
    const s = await reopen();
    const names = ['V1', 'диск-1', '磁盘', '\u{1F4BE} backup', '\uffff'];
    for (const [i, n] of names.entries()) await s.putVolume(rec(n, i + 1), true);
    for (const n of names) assert.equal(s.volume(n)?.name, n);
    assert.deepEqual(
      s
        .volumes()
        .map((r) => r.name)
        .sort(),
      [...names].sort(),
    );
  });

  it('allocateVolumeId increments and persists across reopen', async () => {
    let s = await reopen();
    assert.deepEqual([s.allocateVolumeId(), s.allocateVolumeId(), s.allocateVolumeId()], [1, 2, 3]);
    s = await reopen();
    assert.equal(s.allocateVolumeId(), 4);
    s = await reopen();
    assert.equal(s.allocateVolumeId(), 5);
  });

  it('saveBitmap / loadBitmap round trip across reopen, incl. full pages and pages that became clean', async () => {
    const RS = 4096;
    const regions = 3 * PAGE_BITS + 1000; // 4 pages, the last one partial
    const size = (regions - 1) * RS + 1;
    const bm = new DirtyBitmap(size, RS);
    const other = new DirtyBitmap(size, RS); // a second volume whose name extends the first's
    bm.setRegions(0, PAGE_BITS - 1); // page 0 full
    for (let r = PAGE_BITS; r < 2 * PAGE_BITS; r += 3) bm.setRegions(r, r); // page 1 partial
    bm.setRegions(2 * PAGE_BITS + 10, 2 * PAGE_BITS + 20); // page 2 partial
    bm.setRegions(3 * PAGE_BITS, regions - 1); // page 3 (last, partial) full
    other.setRegions(2 * PAGE_BITS, 2 * PAGE_BITS); // page 2 of V10 partial
    let s = await reopen();
    await s.saveBitmap('V1', bm, true);
    await s.saveBitmap('V10', other, true);

    const load = (st: LmdbStateStore, name: string) => {
      const b = new DirtyBitmap(size, RS);
      st.loadBitmap(name, b);
      return b;
    };
    const same = (b: DirtyBitmap, want: DirtyBitmap, what: string) => {
      assert.equal(b.dirtyRegions, want.dirtyRegions, `${what}: dirtyRegions`);
      assert.deepEqual([...b.runs()], [...want.runs()], `${what}: runs`);
      for (let p = 0; p < want.pageCount; p++)
        assert.deepEqual(Buffer.from(b.pageImage(p)), Buffer.from(want.pageImage(p)), `${what}: page ${p}`);
    };
    s = await reopen();
    same(load(s, 'V1'), bm, 'V1 after first save');
    same(load(s, 'V10'), other, 'V10 after first save');

    // page 1 becomes clean, page 0 partial, page 2 full; lazily (durable=false) saved
    bm.clearRegions(PAGE_BITS, 2 * PAGE_BITS - 1);
    bm.clearRegions(100, 100);
    bm.setRegions(2 * PAGE_BITS, 3 * PAGE_BITS - 1);
    await s.saveBitmap('V1', bm, false);
    // nothing changed since: a no-op
    await s.saveBitmap('V1', bm, true);
    s = await reopen();
    const back = load(s, 'V1');
    same(back, bm, 'V1 after second save');
    assert.equal(back.get(100), false);
    assert.equal(back.get(PAGE_BITS), false);
    same(load(s, 'V10'), other, 'V10 untouched');
    assert.equal(load(s, 'nope').dirtyRegions, 0);

    // the clean page's record is gone, full pages are one byte
    await s.close();
    store = undefined;
    const db = open({ path: path.join(dir, 'hub', 'state.lmdb'), encoding: 'msgpack', compression: false });
    try {
      assert.equal(db.get(['bm', 'V1', 1]), undefined, 'clean page 1 removed');
      assert.equal(Buffer.from(db.get(['bm', 'V1', 2])).length, 1, 'full page 2 stored as 1 byte');
      assert.equal(Buffer.from(db.get(['bm', 'V1', 0])).length, PAGE_BYTES, 'partial page 0 stored as bits');
    } finally {
      await db.close();
    }
  });

  it('a save that fails leaves its pages to the next save (a bit set again marks no page)', async () => {
    const s = await reopen();
    const bm = new DirtyBitmap(64 * 4096, 4096);
    bm.setRegions(3, 3);
    await s.close();
    store = undefined;
    for (const durable of [true, 'flushed'] as const)
      await assert.rejects(s.saveBitmap('V1', bm, durable), /closed/i, `${durable}: a closed store fails`);
    bm.setRegions(3, 3); // the agent reports it again: already set, no page changes
    const s2 = await reopen();
    await s2.saveBitmap('V1', bm, true);
    const back = new DirtyBitmap(64 * 4096, 4096);
    s2.loadBitmap('V1', back);
    assert.ok(back.get(3), 'the page the failed saves took is written by the next one');
  });

  // The memory store models lmdb's writer thread (its 'flushed' saves land a turn later), so it
  // shows the order; with lmdb the commit is visible at once and only its fdatasync is later,
  // which no test here can observe: the same code path runs, as a smoke test.
  for (const kind of ['memory', 'lmdb'] as const) {
    it(`${kind}: a durable save waits for the pages an earlier save took and is still writing (a dirty report's ack)`, async () => {
      const s: StateStore = kind === 'lmdb' ? await reopen() : new MemoryStateStore();
      const bm = new DirtyBitmap(64 * 4096, 4096);
      const load = () => {
        const b = new DirtyBitmap(64 * 4096, 4096);
        s.loadBitmap('V1', b);
        return b;
      };
      for (const second of ['flushed', true] as const) {
        bm.setRegions(7, 9); // a markDirty, say: its commit under way
        const first = s.saveBitmap('V1', bm, 'flushed');
        // an agent reports region 8, dirty in memory already: its page is the first save's
        let seen: number | null = null;
        const again = s.saveBitmap('V1', bm, second).then(() => (seen = load().dirtyRegions));
        await Promise.all([first, again]);
        assert.equal(seen, 3, `${second}: when the second save resolves, the first one's regions are stored`);
        bm.clearRegions(0, 63);
        await s.saveBitmap('V1', bm, true);
      }
    });
  }
});

describe('DirtyLog', () => {
  const RS = 65536;
  const REGIONS = 2 * PAGE_BITS + 77; // 3 pages, the last one partial
  const SIZE = (REGIONS - 1) * RS + 4096;
  let dir: string, file: string;
  const logs: DirtyLog[] = [];
  beforeEach(() => {
    dir = tmpdir();
    file = path.join(dir, 'V1.dirty');
  });
  afterEach(() => {
    for (const l of logs.splice(0)) l.close();
    fs.rmSync(dir, { recursive: true, force: true });
  });
  const openLog = (size = SIZE, rs = RS): DirtyLog => {
    const l = DirtyLog.open(file, size, rs);
    logs.push(l);
    return l;
  };
  const clearAll = (l: DirtyLog) => {
    for (let r = 0; r < l.bitmap.regions; r++) l.clear(r);
  };

  it('open creates a fresh log that is all dirty, and persists that', () => {
    assert.equal(fs.existsSync(file), false);
    const l = openLog();
    assert.equal(l.fresh, true);
    assert.equal(l.bitmap.regions, REGIONS);
    assert.equal(l.bitmap.dirtyRegions, REGIONS);
    assert.equal(fs.statSync(file).size, PAGE_BYTES * (1 + 3));
    // reopened (without close or sync): a known log, still all dirty
    const l2 = openLog();
    assert.equal(l2.fresh, false);
    assert.equal(l2.bitmap.dirtyRegions, REGIONS);
    assert.deepEqual([...l2.bitmap.runs()], [[0, REGIONS]]);
  });

  it('clear() + sync() persists the clearing', () => {
    const l = openLog();
    clearAll(l);
    l.sync();
    const l2 = openLog();
    assert.equal(l2.fresh, false);
    assert.equal(l2.bitmap.dirtyRegions, 0);
    l.mark(0, SIZE); // everything dirty again, persisted at once
    assert.equal(openLog().bitmap.dirtyRegions, REGIONS);
    // a partial clear: every other region of page 1, and the last region
    for (let r = PAGE_BITS; r < 2 * PAGE_BITS; r += 2) l.clear(r);
    l.clear(REGIONS - 1);
    l.sync();
    l.sync(true); // the second sync since they were written (see the hot-region test)
    const l4 = openLog();
    assert.equal(l4.bitmap.dirtyRegions, REGIONS - PAGE_BITS / 2 - 1);
    assert.equal(l4.bitmap.get(PAGE_BITS), false);
    assert.equal(l4.bitmap.get(PAGE_BITS + 1), true);
    assert.equal(l4.bitmap.get(REGIONS - 1), false);
    assert.equal(l4.bitmap.get(REGIONS - 2), true);
  });

  const EXT = 64; // regions per 4 MiB activity-log extent at 64 KiB regions

  it('a write makes its extent hot: the whole extent dirty in the file until quiet and flushed; close() is exact', () => {
    const l = openLog();
    clearAll(l);
    l.sync(); // the fresh log's all-dirty state was not hot: cleared at once
    assert.equal(openLog().bitmap.dirtyRegions, 0);
    l.mark(3 * RS, 3 * RS + 4096);
    assert.deepEqual([...openLog().bitmap.runs()], [[0, EXT]], 'the extent is durably dirty before the write');
    assert.equal(l.hotExtents, 1);
    l.clear(3); // acked at once
    assert.equal(l.bitmap.dirtyRegions, 0, 'the truth is clean');
    l.sync();
    assert.deepEqual([...openLog().bitmap.runs()], [[0, EXT]], 'kept: the image write may not be durable yet');
    const upTo = l.imageFlushStarting();
    l.mark(5 * RS, 5 * RS + 1); // written while the image flush runs: not covered by it
    l.clear(5);
    l.imageFlushed(upTo);
    l.sync();
    assert.equal(l.hotExtents, 1, 'a write after the flush started keeps the extent hot');
    l.imageFlushed(l.imageFlushStarting());
    l.sync();
    assert.equal(l.hotExtents, 0, 'quiet and durable: cold');
    assert.equal(openLog().bitmap.dirtyRegions, 0);
    assert.equal(l.persistedDirtyBytes, 0);
    l.mark(9 * RS, 9 * RS + 1);
    l.mark(2 * EXT * RS, 2 * EXT * RS + 1); // another extent
    l.clear(9);
    l.mark(2 * EXT * RS + 5, 2 * EXT * RS + 6);
    assert.equal(l.hotExtents, 2);
    l.close(); // a clean close writes the truth
    logs.splice(logs.indexOf(l), 1);
    assert.deepEqual([...openLog().bitmap.runs()], [[2 * EXT, 2 * EXT + 1]], 'exact after close');
  });

  it('with coolIdleMs, a quiet durable extent stays hot until idle that long (unless the log is over half full)', async () => {
    const l = DirtyLog.open(file, SIZE, RS, true, { maxExtents: 16, coolIdleMs: 40 });
    logs.push(l);
    l.orderAfter(() => {});
    clearAll(l);
    l.sync();
    const writeAcked = (e: number) => {
      l.mark(e * EXT * RS, e * EXT * RS + 4096);
      l.clear(e * EXT);
    };
    writeAcked(0);
    writeAcked(1);
    l.imageFlushed(l.imageFlushStarting());
    l.sync();
    assert.equal(l.hotExtents, 2, 'quiet and durable, but written just now: still hot');
    await new Promise((r) => setTimeout(r, 60));
    writeAcked(1); // extent 1 written again: not idle
    l.imageFlushed(l.imageFlushStarting());
    l.sync();
    assert.equal(l.hotExtents, 1, 'extent 0, idle for longer than coolIdleMs, went cold');
    assert.deepEqual([...openLog().bitmap.runs()], [[EXT, 2 * EXT]], 'the file keeps only the hot extent');
    // over half full: room first, idle or not
    for (let e = 2; e < 10; e++) writeAcked(e);
    l.imageFlushed(l.imageFlushStarting());
    l.sync();
    assert.equal(l.hotExtents, 0, 'over half full: every quiet durable extent went cold at once');
  });

  it('the activity log is bounded: a new extent evicts the least recently written one', () => {
    const l = DirtyLog.open(file, SIZE, RS, true, { maxExtents: 4 });
    logs.push(l);
    let imageSyncs = 0;
    l.orderAfter(() => imageSyncs++);
    clearAll(l);
    l.sync();
    for (let e = 0; e < 4; e++) l.mark(e * EXT * RS, e * EXT * RS + 1);
    assert.equal(l.hotExtents, 4);
    l.mark(1 * EXT * RS + 7, 1 * EXT * RS + 8); // extent 1 used again: extent 0 is now the oldest
    l.mark(9 * EXT * RS, 9 * EXT * RS + 1);
    assert.equal(l.hotExtents, 4, 'never more than the limit');
    assert.equal(imageSyncs, 1, 'no extent was durable in the image: synced once before evicting');
    const runs = [...openLog().bitmap.runs()];
    assert.deepEqual(runs, [
      [0, 1], // extent 0 went cold, but region 0 is still dirty (not acked)
      [EXT, 4 * EXT],
      [9 * EXT, 10 * EXT],
    ]);
  });

  it('a failed log write leaves the extent cold: the next mark writes it again', () => {
    const l = openLog();
    clearAll(l);
    l.sync();
    const file0 = (l as any).file;
    (l as any).file = {
      ...file0,
      write: () => {
        throw new Error('EIO (test)');
      },
      sync: () => {},
    };
    assert.throws(() => l.mark(7 * RS, 7 * RS + 1), /EIO/);
    assert.equal(l.hotExtents, 0, 'not hot: the file may lack its bits');
    (l as any).file = file0;
    l.mark(7 * RS, 7 * RS + 1); // retried: reaches the file
    assert.deepEqual([...openLog().bitmap.runs()], [[0, EXT]]);
  });

  it('mark() persists immediately: a reopen without sync() sees the new bits', () => {
    const l = openLog();
    clearAll(l);
    l.sync();
    // one byte in region 5; a write spanning pages 0/1; the partial last region
    l.mark(5 * RS + 100, 5 * RS + 101);
    l.mark(PAGE_BITS * RS - 10, PAGE_BITS * RS + 10);
    l.mark(SIZE - 1, SIZE);
    const l2 = openLog(); // l not synced, not closed
    assert.equal(l2.fresh, false);
    assert.deepEqual(
      [...l2.bitmap.runs()],
      [
        [0, EXT], // each write's whole extent
        [PAGE_BITS - EXT, PAGE_BITS + EXT],
        [Math.floor((REGIONS - 1) / EXT) * EXT, REGIONS],
      ],
    );
    // marking an already dirty region changes nothing, and a zero-length mark marks nothing
    l.mark(5 * RS, 5 * RS + 1);
    l.mark(7 * RS, 7 * RS);
    assert.equal(l.bitmap.dirtyRegions, 4);
  });

  it('a log with a mismatched volume size or region size reopens fresh and all dirty', () => {
    const l = openLog();
    clearAll(l);
    l.mark(0, 1);
    l.close();
    logs.splice(logs.indexOf(l), 1);
    assert.equal(openLog().bitmap.dirtyRegions, 1, 'matching: loaded');

    const bigger = SIZE + PAGE_BITS * RS; // one more page
    const lb = openLog(bigger);
    assert.equal(lb.fresh, true);
    assert.equal(lb.bitmap.dirtyRegions, lb.bitmap.regions);
    assert.equal(fs.statSync(file).size, PAGE_BYTES * (1 + 4));
    // the new geometry was persisted, all dirty
    const lb2 = openLog(bigger);
    assert.equal(lb2.fresh, false);
    assert.equal(lb2.bitmap.dirtyRegions, lb2.bitmap.regions);
    clearAll(lb2);
    lb2.sync();

    const l4k = openLog(bigger, 4096); // region size differs
    assert.equal(l4k.fresh, true);
    assert.equal(l4k.bitmap.regionSize, 4096);
    assert.equal(l4k.bitmap.dirtyRegions, l4k.bitmap.regions);
    const back = openLog(bigger, RS); // and back: the 4K log replaced it
    assert.equal(back.fresh, true);
    assert.equal(back.bitmap.dirtyRegions, back.bitmap.regions);

    const smaller = 10 * RS;
    const ls = openLog(smaller);
    assert.equal(ls.fresh, true);
    assert.equal(ls.bitmap.dirtyRegions, 10);
    assert.equal(fs.statSync(file).size, PAGE_BYTES * 2);
  });

  it('a file that is not a dirty log (garbage, empty) opens fresh and all dirty', () => {
    for (const content of [Buffer.alloc(0), Buffer.from('hello'), randomBytes(3 * PAGE_BYTES)]) {
      fs.writeFileSync(file, content);
      const l = openLog();
      assert.equal(l.fresh, true);
      assert.equal(l.bitmap.dirtyRegions, REGIONS);
      assert.equal(openLog().bitmap.dirtyRegions, REGIONS);
    }
  });

  it('a crash while a log is being (re)initialized never leaves a log that reads clean', () => {
    // Simulates kill -9 at the first page write of a new or re-initialized log: whatever the
    // process wrote before reaches the page cache, nothing after.
    const crashAtFirstPageWrite = (fn: () => void) => {
      const orig = realFs.writeSync;
      (realFs as any).writeSync = (fd: number, buf: any, off?: any, len?: any, pos?: any) => {
        if (typeof pos === 'number' && pos >= PAGE_BYTES) throw new Error('simulated crash');
        return (orig as any)(fd, buf, off, len, pos);
      };
      try {
        assert.throws(fn, /simulated crash/);
      } finally {
        realFs.writeSync = orig;
      }
    };
    // a new log
    crashAtFirstPageWrite(() => DirtyLog.open(file, SIZE, RS));
    const l = openLog();
    assert.equal(
      l.bitmap.dirtyRegions,
      REGIONS,
      `new log after a crash: ${l.bitmap.dirtyRegions} of ${REGIONS} regions dirty (fresh=${l.fresh})`,
    );
    clearAll(l);
    l.sync();
    // an existing, all clean log re-initialized for a bigger volume
    const bigger = SIZE + PAGE_BITS * RS;
    crashAtFirstPageWrite(() => DirtyLog.open(file, bigger, RS));
    const lb = openLog(bigger);
    assert.equal(
      lb.bitmap.dirtyRegions,
      lb.bitmap.regions,
      `re-initialized log after a crash: ${lb.bitmap.dirtyRegions} of ${lb.bitmap.regions} regions dirty (fresh=${lb.fresh})`,
    );
  });

  it('memory(): all dirty, fresh, mark/clear/sync/close work without a file', () => {
    const l = DirtyLog.memory(SIZE, RS);
    assert.equal(l.fresh, true);
    assert.equal(l.bitmap.dirtyRegions, REGIONS);
    clearAll(l);
    l.sync(true);
    l.mark(RS, RS + 1);
    assert.deepEqual([...l.bitmap.runs()], [[1, 2]]);
    l.close();
  });
});
