// The journal after a power cut, with a faked boot id (storage/journal-mark.ts): a journal left
// open under another boot cannot prove its points (a volume page may have reached the disk ahead
// of its before-image), so every point is dropped at open, durably, and said so; a kill -9 (same
// boot) and a clean stop before a reboot keep every point. The recorder run shows why: the
// kernel may write back the volume's page and not the journal's.
import { strict as assert } from 'node:assert';
import * as fs from 'node:fs';
import { Journal } from '../storage/journal';
import { checkMark } from '../storage/journal-mark';
import { JournalTarget } from '../storage/journal-target';
import { JournalView } from '../storage/journal-view';
import { tmpdir } from './harness/util';
import { RecordedFile, RecordedImage } from './harness/power-loss';
import { Rng } from './harness/prng';

const MiB = 1 << 20;

function fill(j: Journal, n: number): number[] {
  const v = j.volumeIndex('V1');
  const ids = [];
  for (let i = 0; i < n; i++) {
    j.appendBefore(v, i * 65536, Buffer.alloc(65536, i));
    ids.push(j.appendCheckpoint('flush').id);
  }
  return ids;
}

const ids = (j: Journal) => j.points().map((p) => p.id);

describe('journal: power loss (boot id)', () => {
  it('a journal left open under another boot drops every point at open, durably, and says so', () => {
    const dir = tmpdir();
    const j1 = Journal.open(dir, { segmentBytes: MiB, bootId: 'boot-A' });
    const before = fill(j1, 30); // a few segments: the discard is not only the last one
    assert.ok(fs.readdirSync(dir).filter((f) => f.endsWith('.jnl')).length > 1);
    // no close: the hub stopped uncleanly; then the machine rebooted
    const warns: string[] = [];
    const j2 = Journal.open(dir, { segmentBytes: MiB, bootId: 'boot-B', warn: (_f, m) => warns.push(m) });
    assert.deepEqual(ids(j2), [], 'no point can be proven');
    assert.deepEqual(j2.powerLoss && { dropped: j2.powerLoss.dropped, bootId: j2.powerLoss.bootId }, {
      dropped: before.length,
      bootId: 'boot-A',
    });
    assert.equal(j2.drops, before.length);
    assert.equal(fs.readdirSync(dir).filter((f) => f.endsWith('.jnl')).length, 1, 'the old segments are gone');
    const after = fill(j2, 2);
    assert.ok(after[0] > before[before.length - 1], 'ids keep counting up');
    j2.close();
    // a clean restart (same boot): the dropped points stay dropped, the new ones are there
    const j3 = Journal.open(dir, { segmentBytes: MiB, bootId: 'boot-B' });
    assert.deepEqual(ids(j3), after);
    assert.equal(j3.powerLoss, null);
    j3.close();
  });

  it('keeps every point after a kill -9 (same boot) and after a clean stop before a reboot', () => {
    const dir = tmpdir();
    const j1 = Journal.open(dir, { segmentBytes: MiB, bootId: 'boot-A' });
    const first = fill(j1, 5);
    const j2 = Journal.open(dir, { segmentBytes: MiB, bootId: 'boot-A' }); // j1 never closed: kill -9
    assert.deepEqual(ids(j2), first);
    assert.equal(j2.powerLoss, null);
    const second = fill(j2, 3);
    j2.close(); // a clean stop: synced, marked clean
    assert.deepEqual(checkMark(dir, 'boot-B'), { powerLoss: false, recordedBootId: 'boot-A' });
    const j3 = Journal.open(dir, { segmentBytes: MiB, bootId: 'boot-B' });
    assert.deepEqual(ids(j3), [...first, ...second]);
    assert.equal(j3.powerLoss, null);
    j3.close();
  });

  it('why: with the volume on the power-loss recorder, a cut can keep an overwrite whose before-image was not synced', async () => {
    // The journal's own file is real; the volume is the recorder. The overwrite after a point is a
    // page-cache write; nothing orders it behind the journal's append, so a cut that lands the
    // volume page while the journal's unsynced tail is lost leaves the point unrecoverable.
    const dir = tmpdir();
    const vol = new RecordedFile(Buffer.alloc(64 * 1024, 0x11));
    const img = new RecordedImage(vol);
    const j = Journal.open(dir, { segmentBytes: MiB, bootId: 'boot-A' });
    // the capture reads the before-image from the volume's path: a file with the same content
    const file = dir + '/vol.img';
    fs.writeFileSync(file, vol.data);
    const t = new JournalTarget(img, file, () => ({ journal: j, vol: j.volumeIndex('V1') }));
    const cp = j.appendCheckpoint('flush');
    t.writeSync!(Buffer.alloc(4096, 0x22), 8192);
    const landed = vol.survive('all', new Rng(1)); // the volume page reached the disk ...
    // ... and the journal's tail did not (the cut before its group-commit fdatasync): what a
    // restore of `cp` would read at 8192 is the new data, not 0x11. Only the boot id tells.
    assert.equal(landed[8192], 0x22);
    assert.ok(checkMark(dir, 'boot-B').powerLoss, 'the reboot is seen, so the point is dropped, not served');
    const view = new JournalView(img, j, j.volumeIndex('V1'), cp);
    const buf = Buffer.alloc(4096);
    await view.read(buf, 8192);
    assert.equal(buf[0], 0x11, 'without a cut the point reads the before-image');
    await view.close();
    j.close();
  });
});
