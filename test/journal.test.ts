// The journal's format, retention and point-in-time view, on real files: a torn or corrupted
// tail is cut off at open and the points before it stay; retention drops the oldest points
// first (never the newest by age); a view at each checkpoint reads exactly what the volume held
// then, while writes go on underneath.
import { strict as assert } from 'node:assert';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { Journal } from '../storage/journal';
import { JournalTarget } from '../storage/journal-target';
import { JournalView } from '../storage/journal-view';
import { FileVolume, type BlockTarget } from '../storage/volume';
import { segmentName } from '../storage/journal-format';
import { parseAt } from '../src/hub/journal-at';
import { tmpdir } from './harness/util';
import { Rng } from './harness/prng';

const MiB = 1 << 20;

/** A 1 MiB recovery file of 0x31 bytes and an empty journal beside it. */
function journalBeside(): { file: string; j: Journal } {
  const dir = tmpdir();
  const file = path.join(dir, 'V1R');
  fs.writeFileSync(file, Buffer.alloc(MiB, 0x31));
  return { file, j: Journal.open(path.join(dir, 'journal'), { segmentBytes: 16 * MiB }) };
}

function seg1(dir: string): string {
  return path.join(dir, segmentName(1));
}

describe('journal format', () => {
  it('reopens with every point; a torn tail is cut off and what came before stays', () => {
    const dir = tmpdir();
    let j = Journal.open(dir, { segmentBytes: 4 * MiB });
    const v = j.volumeIndex('V1');
    j.appendBefore(v, 0, Buffer.alloc(4096, 1));
    j.appendCheckpoint('flush');
    j.appendBefore(v, 4096, Buffer.alloc(4096, 2));
    j.appendCheckpoint('tag', 'before upgrade');
    j.appendBefore(v, 8192, Buffer.alloc(8192, 3));
    const whole = j.bytes;
    j.close();
    // torn: the last record lost its last 100 bytes (a crash mid-append)
    fs.truncateSync(seg1(dir), whole - 100);
    const warned: object[] = [];
    j = Journal.open(dir, { segmentBytes: 4 * MiB, warn: (f) => warned.push(f) });
    assert.deepEqual(
      j.points().map((p) => [p.id, p.kind, p.label]),
      [
        [1, 'flush', undefined],
        [2, 'tag', 'before upgrade'],
      ],
    );
    assert.equal(warned.length, 1);
    assert.equal(j.volumeIndex('V1'), v);
    const cut = j.bytes;
    assert.ok(cut < whole - 8192, 'the torn record is gone');
    // the next point continues the ids, appended where the torn record was
    assert.equal(j.appendCheckpoint('interval').id, 3);
    j.close();
  });

  it('a record with a bad CRC at the tail is dropped, with the records after it', () => {
    const dir = tmpdir();
    const j = Journal.open(dir, { segmentBytes: 4 * MiB });
    j.appendBefore(j.volumeIndex('V1'), 0, Buffer.alloc(4096, 1));
    j.appendCheckpoint('flush');
    const before = j.bytes;
    j.appendBefore(0, 4096, Buffer.alloc(4096, 2));
    j.appendCheckpoint('flush');
    j.close();
    const fd = fs.openSync(seg1(dir), 'r+');
    fs.writeSync(fd, Buffer.from([0xff]), 0, 1, before + 32 + 100); // a flipped payload byte
    fs.closeSync(fd);
    const k = Journal.open(dir, { segmentBytes: 4 * MiB });
    assert.equal(k.bytes, before);
    assert.deepEqual(
      k.points().map((p) => p.id),
      [1],
    );
    k.close();
  });

  it('parses --at: ids, ISO times, "N min ago", latest; refuses the rest', () => {
    const now = Date.parse('2026-12-01T12:00:00Z');
    assert.deepEqual(parseAt('latest', now), { latest: true });
    assert.deepEqual(parseAt('42', now), { id: 42 });
    assert.deepEqual(parseAt('10 min ago', now), { time: now - 600_000 });
    assert.deepEqual(parseAt('90s ago', now), { time: now - 90_000 });
    assert.deepEqual(parseAt('2 hours ago', now), { time: now - 7_200_000 });
    assert.deepEqual(parseAt('2026-12-01T11:00:00Z', now), { time: now - 3_600_000 });
    assert.throws(() => parseAt('yesterday', now), /expected a checkpoint id/);
    assert.throws(() => parseAt('3 weeks ago', now), /unknown unit/);
  });
});

describe('journal retention', () => {
  it('drops points older than the retention, oldest first, never the newest', () => {
    const j = Journal.open(tmpdir(), { segmentBytes: 4 * MiB });
    const t0 = 1_000_000;
    for (let i = 0; i < 5; i++) j.appendCheckpoint('interval', '', t0 + i * 1000);
    assert.equal(j.enforce(t0 + 4000 + 500, 2000, 1 << 30), 3); // points at 0, 1 and 2 s are over 2 s old
    assert.deepEqual(
      j.points().map((p) => p.id),
      [4, 5],
    );
    assert.equal(j.enforce(t0 + 1e9, 2000, 1 << 30), 1, 'the newest point stays, however old');
    assert.deepEqual(
      j.points().map((p) => p.id),
      [5],
    );
    assert.equal(j.drops, 4);
    j.close();
  });

  it('over the size cap, the oldest segments go with their points; a pinned reader keeps its segments', () => {
    const dir = tmpdir();
    const j = Journal.open(dir, { segmentBytes: MiB });
    const v = j.volumeIndex('V1');
    for (let i = 0; i < 20; i++) {
      j.appendBefore(v, 0, Buffer.alloc(256 * 1024, i));
      j.appendCheckpoint('flush');
    }
    assert.ok(j.bytes > 4 * MiB);
    const firstPos = j.points()[0].pos;
    const unpin = j.pin(firstPos);
    assert.equal(j.enforce(Date.now(), 3_600_000, 2 * MiB), 0, 'a reader pins the oldest segment');
    unpin();
    const dropped = j.enforce(Date.now(), 3_600_000, 2 * MiB);
    assert.ok(dropped > 0);
    assert.ok(j.bytes <= 2 * MiB, `${j.bytes} bytes left`);
    assert.equal(j.points()[j.points().length - 1].id, 20, 'the newest points stay');
    assert.equal(j.drops, dropped);
    j.close();
  });
});

describe('journal view', () => {
  it('reads the volume as of each checkpoint while writes go on underneath', async () => {
    const dir = tmpdir();
    const size = 4 * MiB;
    const file = path.join(dir, 'V1R');
    fs.writeFileSync(file, Buffer.alloc(size, 0x11));
    const j = Journal.open(path.join(dir, 'journal'), { segmentBytes: MiB });
    const vol = FileVolume.open(file);
    const t = new JournalTarget(vol, file, () => ({ journal: j, vol: j.volumeIndex('V1') }));
    const rnd = new Rng(7);
    const snaps: { id: number; bytes: Buffer }[] = [];
    const views: JournalView[] = [];
    for (let round = 0; round < 12; round++) {
      for (let w = 0; w < 20; w++) {
        const len = 512 * (1 + rnd.int(256)),
          off = 512 * rnd.int((size - len) / 512);
        const data = Buffer.alloc(len, (round * 20 + w) & 0xff);
        if (rnd.int(2) && t.writeSync && len <= 64 * 1024) t.writeSync(data, off);
        else await t.write(data, off);
      }
      const cp = j.appendCheckpoint('flush');
      snaps.push({ id: cp.id, bytes: fs.readFileSync(file) });
      if (round === 3) views.push(new JournalView(vol, j, 0, cp)); // built early, kept current by listening
    }
    for (const s of snaps) {
      const cp = j.points().find((p) => p.id === s.id)!;
      const view = new JournalView(vol, j, 0, cp);
      const got = Buffer.alloc(size);
      await view.read(got, 0);
      assert.ok(got.equals(s.bytes), `checkpoint ${s.id} reads as it was`);
      await view.close();
    }
    const early = Buffer.alloc(size);
    await views[0].read(early, 0);
    assert.ok(early.equals(snaps[3].bytes), 'a view made before later writes still reads its point');
    await views[0].close();
    await t.close();
    j.close();
  });
});

describe('journal rollback (failover --at)', () => {
  it('writing back the changed runs of a view rolls the volume back; newer points go, durably; older ones stay exact', async () => {
    const dir = tmpdir();
    const size = 4 * MiB;
    const file = path.join(dir, 'V1R');
    fs.writeFileSync(file, Buffer.alloc(size, 0x22));
    const jdir = path.join(dir, 'journal');
    let j = Journal.open(jdir, { segmentBytes: MiB });
    const vol = FileVolume.open(file);
    const t = new JournalTarget(vol, file, () => ({ journal: j, vol: j.volumeIndex('V1') }));
    const rnd = new Rng(11);
    const snaps: { id: number; bytes: Buffer }[] = [];
    const writeRound = async (round: number) => {
      for (let w = 0; w < 16; w++) {
        const len = 512 * (1 + rnd.int(300)),
          off = 512 * rnd.int((size - len) / 512);
        await t.write(Buffer.alloc(len, (round * 16 + w + 1) & 0xff), off);
      }
      const cp = j.appendCheckpoint('flush');
      snaps.push({ id: cp.id, bytes: fs.readFileSync(file) });
    };
    for (let round = 0; round < 6; round++) await writeRound(round);
    const readAt = async (id: number) => {
      const v = new JournalView(
        vol,
        j,
        0,
        j.points().find((p) => p.id === id)!,
      );
      const got = Buffer.alloc(size);
      await v.read(got, 0);
      await v.close();
      return got;
    };

    // roll back to the 4th point: exactly the blocks changed since are written back
    const to = snaps[3];
    const view = new JournalView(
      vol,
      j,
      0,
      j.points().find((p) => p.id === to.id)!,
    );
    let runBytes = 0;
    for (const [a, b] of view.changedRuns()) {
      assert.ok(a < b);
      const buf = Buffer.alloc((b - a) * 4096);
      await view.read(buf, a * 4096);
      await t.write(buf, a * 4096);
      runBytes += buf.length;
    }
    await view.close();
    assert.ok(runBytes > 0 && runBytes < size, `only what changed is written back (${runBytes} bytes)`);
    assert.ok(fs.readFileSync(file).equals(to.bytes), 'the volume holds the point again');
    assert.equal(j.dropAfter(to.id), 2, 'the two newer points are dropped');
    assert.deepEqual(
      j.points().map((p) => p.id),
      snaps.slice(0, 4).map((s) => s.id),
    );
    for (const s of snaps.slice(0, 4)) assert.ok((await readAt(s.id)).equals(s.bytes), `point ${s.id} still exact`);

    // life goes on: a new point, and the old ones still read right
    await writeRound(6);
    for (const s of [snaps[0], snaps[3], snaps[6]])
      assert.ok((await readAt(s.id)).equals(s.bytes), `point ${s.id} after more writes`);
    const ids = j.points().map((p) => p.id);
    assert.ok(snaps[6].id > snaps[5].id, 'ids are never reused');
    j.close();
    j = Journal.open(jdir, { segmentBytes: MiB });
    assert.deepEqual(
      j.points().map((p) => p.id),
      ids,
      'the drop is durable: a reopen does not bring the dropped points back',
    );
    await t.close();
    j.close();
  });
});

describe('journal capture of large writes', () => {
  it('a write over one record (3 MiB) is split: the journal reopens whole and a view reads the point', async () => {
    const dir = tmpdir();
    const size = 8 * MiB;
    const file = path.join(dir, 'V1R');
    fs.writeFileSync(file, Buffer.alloc(size, 0x31));
    const jdir = path.join(dir, 'journal');
    let j = Journal.open(jdir, { segmentBytes: 16 * MiB });
    const vol = FileVolume.open(file);
    const t = new JournalTarget(vol, file, () => ({ journal: j, vol: j.volumeIndex('V1') }));
    const cp = j.appendCheckpoint('flush');
    await t.write(Buffer.alloc(3 * MiB, 0x77), MiB + 512);
    j.appendCheckpoint('flush');
    const view = new JournalView(vol, j, 0, cp);
    const got = Buffer.alloc(size);
    await view.read(got, 0);
    await view.close();
    assert.ok(got.equals(Buffer.alloc(size, 0x31)), 'the view reads the point before the large write');
    j.close();
    const warned: object[] = [];
    j = Journal.open(jdir, { segmentBytes: 16 * MiB, warn: (f) => warned.push(f) });
    assert.deepEqual(warned, [], 'nothing cut off at reopen');
    assert.equal(j.points().length, 2);
    await t.close();
    j.close();
  });

  it('a closed target refuses a late write: no descriptor reopened, no point dropped', async () => {
    const { file, j } = journalBeside();
    const t = new JournalTarget(FileVolume.open(file), file, () => ({ journal: j, vol: j.volumeIndex('V1') }));
    j.appendCheckpoint('flush');
    await t.write(Buffer.alloc(4096, 0x77), 0); // the before-image descriptor is open
    await t.close();
    const fds = () => fs.readdirSync('/proc/self/fd').length;
    const before = fds();
    await assert.rejects(t.write(Buffer.alloc(4096, 0x78), 8192), /after it was closed/);
    assert.throws(() => t.writeSync!(Buffer.alloc(4096, 0x78), 16384), /after it was closed/);
    assert.equal(fds(), before, 'no descriptor reopened');
    assert.equal(j.points().length, 1, 'the point stays: no history counted lost');
    j.close();
  });

  it('a target closed while a write waits for writes in flight fails that write, and keeps every point', async () => {
    const { file, j } = journalBeside();
    const vol = FileVolume.open(file);
    let land!: () => void;
    const inFlight = new Promise<void>((res) => (land = res));
    const below: BlockTarget = {
      sizeBytes: vol.sizeBytes,
      read: (b, o) => vol.read(b, o),
      write: (b, o) => vol.write(b, o),
      flush: () => vol.flush(),
      close: () => vol.close(),
      landing: () => inFlight, // a write of the region is still in flight below
    };
    const t = new JournalTarget(below, file, () => ({ journal: j, vol: j.volumeIndex('V1') }));
    j.appendCheckpoint('flush');
    const late = t.write(Buffer.alloc(4096, 0x77), 0);
    await t.close();
    land();
    await assert.rejects(late, /after it was closed/);
    assert.equal(j.points().length, 1, 'no history counted lost');
    j.close();
  });
});
