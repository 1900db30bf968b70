// How many fdatasyncs the journal and a recovery volume cost per guest flush (issue 17), on real
// files: the hub's per-flush pattern (a 4 KiB overwrite through the capture filter, then a
// checkpoint at the FLUSH marker) appends a before-image and a point every time. Those small
// appends must not start an fdatasync each (they would share the disk with the guest's own
// flushes); the group commit's flush() syncs the journal once and the volume once, side by side
// (one filesystem commit for both; docs/JOURNAL.md "Crash and power-loss ordering" says why the
// order between them keeps nothing).
// A bulk stream (1 MiB or more unsynced) still starts its early journal sync.
import { strict as assert } from 'node:assert';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { EARLY_SYNC_BYTES, Journal } from '../storage/journal';
import { JournalTarget } from '../storage/journal-target';
import { FileVolume } from '../storage/volume';
import { tmpdir } from './harness/util';
import realFs = require('node:fs'); // the module object itself: the journal's namespace import reads through it

const MiB = 1 << 20;

/** Every fs.fdatasync(fd) started while `fn` runs, as the fd's file name, in order ("done X" in `events`). */
async function syncsDuring(fn: () => Promise<void>, events: string[] = []): Promise<string[]> {
  const seen: string[] = [];
  const orig = realFs.fdatasync;
  realFs.fdatasync = ((fd: number, cb: fs.NoParamCallback): void => {
    const name = path.basename(fs.readlinkSync(`/proc/self/fd/${fd}`));
    seen.push(name);
    events.push(`start ${name}`);
    orig(fd, (e) => (events.push(`done ${name}`), cb(e)));
  }) as typeof realFs.fdatasync;
  try {
    await fn();
  } finally {
    realFs.fdatasync = orig;
  }
  return seen;
}

const turn = (): Promise<void> => new Promise((res) => setImmediate(res));

function setup(): { j: Journal; t: JournalTarget; seg: string } {
  const dir = tmpdir();
  const file = path.join(dir, 'V1R');
  fs.writeFileSync(file, Buffer.alloc(8 * MiB, 0x11));
  const j = Journal.open(path.join(dir, 'journal'), { segmentBytes: 64 * MiB });
  const t = new JournalTarget(FileVolume.open(file), file, () => ({ journal: j, vol: j.volumeIndex('V1') }));
  return { j, t, seg: '000000000001.jnl' };
}

describe('journal syncs per guest flush', () => {
  it('4 KiB writes with a point after each start no journal sync of their own; a group commit syncs journal and volume side by side', async () => {
    const { j, t, seg } = setup();
    const syncs = await syncsDuring(async () => {
      for (let i = 0; i < 50; i++) {
        t.writeSync!(Buffer.alloc(4096, i), 4096 * ((i * 37) % 2048));
        j.appendCheckpoint('flush'); // the FLUSH marker: every next write is the first of its epoch
        await turn();
        await turn();
      }
    });
    assert.deepEqual(syncs, [], '50 write + point pairs, no commit: no fdatasync');
    assert.equal(j.points().length, 50);
    const events: string[] = [];
    const commit = await syncsDuring(() => t.flush(), events);
    assert.deepEqual([...commit].sort(), [seg, 'V1R'], 'one round: the journal once, the volume once');
    assert.ok(events.indexOf(`done ${seg}`) > 1 && events.indexOf('done V1R') > 1, `together: ${events.join(', ')}`);
    assert.deepEqual(await syncsDuring(() => t.flush()), ['V1R'], 'nothing new in the journal: the volume only');
    await t.close();
    j.close();
  });

  it('a bulk stream starts its early journal sync once 1 MiB is unsynced', async () => {
    const { j, t, seg } = setup();
    const syncs = await syncsDuring(async () => {
      for (let o = 0; o < EARLY_SYNC_BYTES + 256 * 1024; o += 256 * 1024) {
        await t.write(Buffer.alloc(256 * 1024, 7), o);
        await turn();
      }
    });
    assert.ok(syncs.length >= 1 && syncs.every((s) => s === seg), `early journal sync(s) only: ${syncs.join(' ')}`);
    await j.sync();
    await t.close();
    j.close();
  });

  it('a point without a label (each FLUSH marker) is one write: no empty buffer, which libuv writes with a call of its own', () => {
    const { j, t } = setup();
    const lengths: number[][] = [];
    const origv = realFs.writevSync,
      orig = realFs.writeSync;
    const journalFd = (fd: number) => fs.readlinkSync(`/proc/self/fd/${fd}`).endsWith('.jnl');
    realFs.writevSync = ((fd: number, bufs: NodeJS.ArrayBufferView[], pos?: number) => {
      if (journalFd(fd)) lengths.push(bufs.map((b) => b.byteLength));
      return origv(fd, bufs, pos);
    }) as typeof realFs.writevSync;
    realFs.writeSync = ((fd: number, buf: NodeJS.ArrayBufferView, ...rest: never[]) => {
      if (journalFd(fd)) lengths.push([typeof rest[1] === 'number' ? rest[1] : buf.byteLength]);
      return (orig as (...a: unknown[]) => number)(fd, buf, ...rest);
    }) as typeof realFs.writeSync;
    let first;
    try {
      t.writeSync!(Buffer.alloc(4096, 1), 0);
      first = j.appendCheckpoint('flush');
      t.writeSync!(Buffer.alloc(4096, 2), 8192);
      j.appendCheckpoint('flush');
      j.dropAfter(first.id); // a DROP record: no payload either
    } finally {
      realFs.writevSync = origv;
      realFs.writeSync = orig;
    }
    assert.ok(lengths.length >= 3, `the journal's writes were seen: ${JSON.stringify(lengths)}`);
    assert.ok(
      lengths.every((l) => l.every((n) => n > 0)),
      `no zero-length buffer: ${JSON.stringify(lengths)}`,
    );
    const dir = j.dir;
    j.close();
    const again = Journal.open(dir, { segmentBytes: 64 * MiB });
    assert.deepEqual(
      again.points().map((p) => [p.id, p.kind]),
      [[first.id, 'flush']],
      'the point reopens; the dropped one stays dropped',
    );
    again.close();
  });
});
