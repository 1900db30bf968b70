// sync-write.ts on a real recovery file: which sync answers go straight to the page cache (no
// threadpool round trip in the serial apply queue) and which take the target's asynchronous write.
import { strict as assert } from 'node:assert';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { randomBytes } from 'node:crypto';
import { IO_OK } from '../protocol';
import { MemoryStateStore } from '../storage/state';
import { Replica, openFileTarget } from '../src/hub/replica';
import { openDirectTarget } from '../src/hub/replica-spec';
import type { TargetOpener } from '../src/hub/replica-spec';
import { checkAnswer, writeRange } from '../src/hub/sync-write';
import { silentLogger } from '../src/log';
import { tmpdir } from './harness/util';
import { Journal } from '../storage/journal';
import { JournalTarget } from '../storage/journal-target';
import { GuardedTarget } from '../storage/overlay';
import { KnownZeroMap, TrackedTarget } from '../storage/tracking';
import { FileVolume } from '../storage/volume';

const REGION = 64 * 1024;
const SIZE = 8 << 20;
const MIB = 1 << 20;

async function replica(
  seed: Buffer | null,
  open: TargetOpener = openFileTarget,
): Promise<{ rep: Replica; file: string }> {
  const file = path.join(tmpdir(), 'V1R');
  if (seed) fs.writeFileSync(file, seed);
  const rep = new Replica({ name: 'V1', path: file }, new MemoryStateStore(), REGION, silentLogger());
  await rep.attach(SIZE, open, true, 'vm1');
  return { rep, file };
}

/** Count the target's asynchronous writes (the threadpool or a write window). */
function countWrites(rep: Replica): { n: number } {
  const t = rep.target!,
    count = { n: 0 },
    write = t.write.bind(t);
  t.write = (buf: Buffer, offset: number) => {
    count.n++;
    return write(buf, offset);
  };
  return count;
}

/** A dense 1 MiB answer to a read at `at`. */
function answer(at: number, data: Buffer) {
  const ans = checkAnswer(
    { cmd: 0, reqId: 1, ioStatus: IO_OK, volumeId: 1, data } as never,
    at,
    at + data.length,
    () => true,
  );
  assert.ok(ans);
  return ans;
}

describe('sync answers onto the recovery volume (sync-write.ts)', () => {
  it('a whole 1 MiB answer onto a fresh page-cache replica is written before writeRange returns', async () => {
    const { rep, file } = await replica(null);
    const writes = countWrites(rep),
      data = randomBytes(MIB);
    const done = writeRange(rep, answer(2 * MIB, data), 2 * MIB, 3 * MIB);
    // no turn of the event loop yet: the bytes are in the page cache already
    const fd = fs.openSync(file, 'r');
    const got = Buffer.alloc(MIB);
    fs.readSync(fd, got, 0, MIB, 2 * MIB);
    fs.closeSync(fd);
    assert.ok(got.equals(data), 'written synchronously');
    await done;
    assert.equal(writes.n, 0, 'no asynchronous write');
    await rep.target!.close();
  });

  it('a seeded replica without a journal takes it synchronously too; --cache none keeps its write window', async () => {
    for (const [open, async] of [
      [openFileTarget, 0],
      [openDirectTarget, 1],
    ] as const) {
      const { rep, file } = await replica(randomBytes(SIZE), open);
      const writes = countWrites(rep),
        data = randomBytes(MIB);
      await writeRange(rep, answer(MIB, data), MIB, 2 * MIB);
      await rep.target!.flush();
      assert.equal(writes.n, async, 'asynchronous writes of the whole run');
      assert.ok(
        fs
          .readFileSync(file)
          .subarray(MIB, 2 * MIB)
          .equals(data),
        'and it landed',
      );
      // a run up to 256 KiB goes to the page cache synchronously on either
      const small = randomBytes(256 * 1024);
      await writeRange(rep, answer(4 * MIB, small), 4 * MIB, 4 * MIB + small.length);
      assert.equal(writes.n, async, 'a small run: no asynchronous write');
      await rep.target!.close();
    }
  });
});

describe('large synchronous writes under the journal (GuardedTarget.tryWriteSync)', () => {
  it('go synchronously only where the journal reads no before-image: known zero, or recorded this epoch', async () => {
    const dir = tmpdir(),
      file = path.join(dir, 'V1R');
    fs.writeFileSync(file, Buffer.alloc(SIZE));
    const vol = FileVolume.open(file);
    const zeros = new KnownZeroMap(SIZE, REGION);
    const j = Journal.open(path.join(dir, 'journal'), { segmentBytes: 16 * MIB });
    const jt = new JournalTarget(new TrackedTarget(vol, zeros), file, () => ({ journal: j, vol: j.volumeIndex('V1') }));
    const g = new GuardedTarget(jt);
    const a = randomBytes(MIB),
      b = randomBytes(MIB);
    // known zero (a replica this hub created): a ZERO record, no read
    assert.equal(g.tryWriteSync(a, 0), true, 'a fresh range goes synchronously');
    // no longer known zero, recorded this epoch: nothing to read
    assert.equal(g.tryWriteSync(b, 0), true, 'a range recorded this epoch goes synchronously');
    j.appendCheckpoint('interval');
    assert.equal(jt.readsBefore(0, MIB), true, 'a new epoch needs the before-image');
    assert.equal(g.tryWriteSync(a, 0), false, 'which is read asynchronously: write() is the way');
    await g.write(a, 0);
    assert.equal(g.tryWriteSync(b, 0), true, 'recorded now');
    assert.equal(g.tryWriteSync(randomBytes(2 * MIB), 2 * MIB), false, 'over SYNC_LARGE_MAX: never');
    const got = Buffer.alloc(MIB);
    await g.read(got, 0);
    assert.ok(got.equals(b), 'the last write is what the volume holds');
    j.close();
    await g.close();
  });
});
