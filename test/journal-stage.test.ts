// Staged journal records (storage/journal-stage.ts): the before-images of a socket read's small
// writes are captured ahead (JournalTarget.prepareWrite, in the order the writes arrived) and
// written with one append before the first of those overwrites. On real files, with writes that
// overlap inside a batch, partial blocks, known-zero and data regions, batches split by a full
// stage and segments rolling mid-flush: every view at every point reads the volume as it was at
// that point, live (a view made while records are staged too) and after a reopen; and from the
// files exactly as they stood just after each overwrite's syscall, as a kill -9 there would leave
// them: no overwrite ever reaches the volume before the record that undoes it.
import { strict as assert } from 'node:assert';
import * as fs from 'node:fs';
import * as path from 'node:path';
import realFs = require('node:fs');
import { Journal } from '../storage/journal';
import { JournalTarget } from '../storage/journal-target';
import { JournalView } from '../storage/journal-view';
import { BlockTarget, FileVolume } from '../storage/volume';
import { KnownZeroMap, TrackedTarget } from '../storage/tracking';
import { failIfStuck, tmpdir } from './harness/util';
import { Rng } from './harness/prng';

const KiB = 1024;
const SIZE = 512 * KiB; // 128 journal blocks: a batch's writes overlap often
const HALF = SIZE / 2; // [0, HALF) holds data before the journal starts; [HALF, SIZE) is a hole

/** Where the test stands, for a hang's report (failIfStuck): a label and a count of steps taken. */
const where = { step: 'start', n: 0 };
function step(label: string): void {
  where.step = label;
  where.n++;
}

interface Point {
  id: number;
  bytes: Buffer;
}

async function viewBytes(vol: BlockTarget, j: Journal, id: number): Promise<Buffer> {
  const v = new JournalView(
    vol,
    j,
    0,
    j.points().find((p) => p.id === id)!,
  );
  try {
    const got = Buffer.alloc(SIZE);
    step(`view of point ${id}`);
    await v.read(got, 0);
    return got;
  } finally {
    await v.close();
  }
}

/** The journal and volume as a kill -9 right now would leave them, reopened: every point must read right. */
async function checkCrashCopy(dir: string, file: string, points: Point[], at: string): Promise<void> {
  step(`kill -9 copy ${at}`);
  const copy = fs.mkdtempSync(path.join(dir, 'crash-'));
  fs.cpSync(path.join(dir, 'journal'), path.join(copy, 'journal'), { recursive: true });
  fs.copyFileSync(file, path.join(copy, 'V1R'));
  const j = Journal.open(path.join(copy, 'journal'), { segmentBytes: 1 << 20 });
  const vol = FileVolume.open(path.join(copy, 'V1R'));
  try {
    for (const p of points)
      assert.ok((await viewBytes(vol, j, p.id)).equals(p.bytes), `point ${p.id} reads as it was, killed ${at}`);
  } finally {
    j.close();
    await vol.close();
    fs.rmSync(copy, { recursive: true, force: true });
  }
}

/** Counts fs.writeSync / fs.writevSync calls on any descriptor but `volumeFd` (the journal's appends). */
function countJournalWrites(volumeFd: number): { n: number; restore(): void } {
  // the module object itself: storage's `import * as fs` reads its functions through it at each call
  const mod = realFs as unknown as Record<'writeSync' | 'writevSync', (fd: number, ...rest: unknown[]) => number>;
  const w = mod.writeSync,
    wv = mod.writevSync;
  const c = {
    n: 0,
    restore: () => {
      mod.writeSync = w;
      mod.writevSync = wv;
    },
  };
  mod.writeSync = (fd, ...rest) => (fd !== volumeFd && c.n++, w(fd, ...rest));
  mod.writevSync = (fd, ...rest) => (fd !== volumeFd && c.n++, wv(fd, ...rest));
  return c;
}

describe("journal: records staged ahead of a read's writes", () => {
  // A hang (no step for 60 s; the whole test takes seconds) fails with where it stood.
  it('one append per batch, and every point exact: live, reopened, and killed just after any overwrite', () =>
    failIfStuck(60_000, () => `${where.step} (step ${where.n})`, staged()));
});

async function staged(): Promise<void> {
  const dir = tmpdir();
  const file = path.join(dir, 'V1R');
  fs.writeFileSync(file, '');
  fs.truncateSync(file, SIZE); // a fresh sparse replica, as the hub creates one
  const jdir = path.join(dir, 'journal');
  let j = Journal.open(jdir, { segmentBytes: 1 << 20 }); // small segments: rolls happen mid-flush
  const vol = FileVolume.open(file);
  const zeros = new KnownZeroMap(SIZE, 16 * KiB);
  const rnd = new Rng(1707);
  const model = Buffer.alloc(SIZE);
  const points: Point[] = [];
  let crashChecks = 0,
    overwrites = 0,
    batchesAppended = 0;
  // Under the known-zero map, a spy: right after each overwrite's syscall, a kill -9 copy is checked.
  const spy: BlockTarget = {
    get sizeBytes() {
      return vol.sizeBytes;
    },
    read: (b, o) => vol.read(b, o),
    write: async (b, o) => {
      await vol.write(b, o);
      overwrites++;
    },
    writeSync: (b, o) => {
      vol.writeSync!(b, o);
      overwrites++;
      pendingCheck = true; // checked by the test's loop, which may await
    },
    flush: () => vol.flush(),
    close: () => vol.close(),
  };
  let pendingCheck = false,
    journaling = false;
  const t = new JournalTarget(new TrackedTarget(spy, zeros), file, () =>
    journaling ? { journal: j, vol: j.volumeIndex('V1') } : null,
  );
  const fill = rnd.bytes(HALF);
  await t.write(fill, 0); // data below, before the journal: the map no longer vouches for it
  fill.copy(model, 0);
  journaling = true;
  const appends = countJournalWrites((vol as unknown as { fd: number }).fd);
  points.push({ id: j.appendCheckpoint('flush').id, bytes: Buffer.from(model) });
  let liveView: { view: JournalView; point: Point } | null = null;
  for (let round = 0; round < 8; round++) {
    for (let batch = 0; batch < 6; batch++) {
      const writes: [Buffer, number][] = [];
      const n = 1 + rnd.int(batch === 5 ? 40 : 12); // 40 x up to 16 KiB: the stage (256 KiB) fills mid-batch
      for (let w = 0; w < n; w++) {
        const len = 512 * (1 + rnd.int(32)),
          off = 512 * rnd.int((SIZE - len) / 512);
        writes.push([rnd.bytes(len), off]);
      }
      for (const [b, o] of writes) t.prepareWrite(o, o + b.length); // as the session announces a read's writes
      if (round === 3 && batch === 2 && !liveView) {
        // a view made while records are staged: it hears of them when they are written
        const p = points[points.length - 1];
        liveView = {
          view: new JournalView(
            vol,
            j,
            0,
            j.points().find((x) => x.id === p.id)!,
          ),
          point: p,
        };
      }
      const before = appends.n;
      for (const [b, o] of writes) {
        step(`round ${round} batch ${batch}: write ${o}+${b.length}`);
        t.writeSync!(b, o);
        b.copy(model, o);
        if (pendingCheck && rnd.int(4) === 0) {
          await checkCrashCopy(dir, file, points, `after write ${overwrites}`);
          crashChecks++;
        }
        pendingCheck = false;
      }
      if (n <= 12) {
        // up to 12 x 16 KiB, widened: the stage holds them all; a roll opens a segment, writes nothing
        assert.ok(appends.n - before <= 1, `one journal append for a batch of ${n} (${appends.n - before})`);
        batchesAppended += appends.n - before;
      }
      if (rnd.int(3) === 0) {
        const b = rnd.bytes(512 * (1 + rnd.int(300))),
          o = 512 * rnd.int((SIZE - b.length) / 512);
        step(`round ${round} batch ${batch}: queued write ${o}+${b.length}`);
        await t.write(b, o); // a write of the queue's path between batches
        b.copy(model, o);
      }
    }
    points.push({ id: j.appendCheckpoint('flush').id, bytes: Buffer.from(model) });
  }
  appends.restore();
  assert.ok(crashChecks > 20, `kill -9 copies checked (${crashChecks})`);
  assert.ok(batchesAppended > 20, `batches whose records went in one append (${batchesAppended})`);
  for (const p of points) assert.ok((await viewBytes(vol, j, p.id)).equals(p.bytes), `point ${p.id} (live)`);
  const got = Buffer.alloc(SIZE);
  await liveView!.view.read(got, 0);
  assert.ok(got.equals(liveView!.point.bytes), 'a view made while records were staged reads its point');
  await liveView!.view.close();
  assert.ok(fs.readdirSync(jdir).filter((f) => f.endsWith('.jnl')).length > 1, 'segments rolled');
  j.close();
  j = Journal.open(jdir, { segmentBytes: 1 << 20 });
  for (const p of points) assert.ok((await viewBytes(vol, j, p.id)).equals(p.bytes), `point ${p.id} (reopened)`);
  j.close();
  await t.close();
}
