// ZERO records: on a replica the hub created (known zero under the capture filter), the first
// overwrite of a never-written range records a 36-byte ZERO record instead of reading and
// appending zeros. A view at the point before reads zeros there, both live (the append
// listener) and after a reopen (the scan); ranges written since are captured with their bytes.
import { strict as assert } from 'node:assert';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { Journal } from '../storage/journal';
import { JournalTarget } from '../storage/journal-target';
import { JournalView } from '../storage/journal-view';
import { FileVolume } from '../storage/volume';
import { KnownZeroMap, TrackedTarget } from '../storage/tracking';
import { tmpdir } from './harness/util';

const MiB = 1 << 20;

async function readAll(view: JournalView): Promise<Buffer> {
  const got = Buffer.alloc(view.sizeBytes);
  await view.read(got, 0);
  return got;
}

describe('journal ZERO records', () => {
  it('a never-written range costs a ZERO record, and views at each point read it right, live and reopened', async () => {
    const dir = tmpdir();
    const size = 8 * MiB;
    const file = path.join(dir, 'V1R');
    fs.writeFileSync(file, '');
    fs.truncateSync(file, size); // a fresh sparse replica, as the hub creates one
    const jdir = path.join(dir, 'journal');
    let j = Journal.open(jdir, { segmentBytes: 16 * MiB });
    const vol = FileVolume.open(file);
    const zeros = new KnownZeroMap(size, 64 * 1024);
    const t = new JournalTarget(new TrackedTarget(vol, zeros), file, () => ({ journal: j, vol: j.volumeIndex('V1') }));
    const model = Buffer.alloc(size);
    const put = async (b: Buffer, at: number, sync = false) => {
      if (sync) t.writeSync!(b, at);
      else await t.write(b, at);
      b.copy(model, at);
    };
    const a = j.appendCheckpoint('flush');
    const atA = Buffer.from(model);
    const before = j.bytes;
    await put(Buffer.alloc(MiB, 0x41), 0); // fresh: ZERO
    await put(Buffer.alloc(4096, 0x42), 3 * MiB + 8192, true); // fresh, small, synchronous: ZERO
    assert.ok(j.bytes - before < 200, `two ZERO records, no payload (${j.bytes - before} bytes)`);
    await put(Buffer.alloc(4096, 0x43), 3 * MiB, true); // its region was written: read and recorded
    assert.ok(j.bytes - before >= 4096, 'a range in a written region is recorded with its bytes');
    const b = j.appendCheckpoint('flush');
    const atB = Buffer.from(model);
    await put(Buffer.alloc(2 * MiB, 0x44), MiB / 2); // half over the first write, half fresh
    await put(Buffer.alloc(4096, 0x45), 3 * MiB + 8192, true);
    const c = j.appendCheckpoint('flush');
    const atC = Buffer.from(model);
    await put(Buffer.alloc(4096, 0x46), 7 * MiB); // after the last point: in the view only as the present
    for (const [cp, want] of [
      [a, atA],
      [b, atB],
      [c, atC],
    ] as const) {
      const v = new JournalView(vol, j, 0, cp);
      assert.ok((await readAll(v)).equals(want), `the view at ${cp.id} reads the volume as it was (live)`);
      await v.close();
    }
    j.close();
    j = Journal.open(jdir, { segmentBytes: 16 * MiB });
    for (const [cp, want] of [
      [a, atA],
      [b, atB],
      [c, atC],
    ] as const) {
      const v = new JournalView(
        vol,
        j,
        0,
        j.points().find((p) => p.id === cp.id)!,
      );
      assert.ok((await readAll(v)).equals(want), `the view at ${cp.id} reads the volume as it was (reopened)`);
      await v.close();
    }
    await t.close();
    j.close();
  });

  it('a torn ZERO record at the tail is cut off; the records before it stay', () => {
    const dir = tmpdir();
    let j = Journal.open(dir, { segmentBytes: 4 * MiB });
    const v = j.volumeIndex('V1');
    j.appendZero(v, 0, MiB);
    j.appendCheckpoint('flush');
    j.appendZero(v, MiB, 4096);
    const whole = j.bytes;
    j.close();
    const seg = fs.readdirSync(dir).find((n) => n.endsWith('.jnl'))!;
    fs.truncateSync(path.join(dir, seg), whole - 2); // the last record's payload is torn
    const warned: object[] = [];
    j = Journal.open(dir, { segmentBytes: 4 * MiB, warn: (f) => warned.push(f) });
    assert.equal(warned.length, 1, 'the torn tail is reported');
    assert.equal(j.bytes, whole - 36, 'only the torn ZERO record is cut');
    assert.equal(j.points().length, 1);
    j.close();
  });
});
