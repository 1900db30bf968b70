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

  it('a seeded replica (its before-images may need disk reads) and --cache none keep the asynchronous write', async () => {
    for (const [seed, open] of [
      [randomBytes(SIZE), openFileTarget],
      [null, openDirectTarget],
    ] as const) {
      const { rep, file } = await replica(seed, open);
      const writes = countWrites(rep),
        data = randomBytes(MIB);
      await writeRange(rep, answer(MIB, data), MIB, 2 * MIB);
      await rep.target!.flush();
      assert.equal(writes.n, 1, 'one asynchronous write of the whole run');
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
      assert.equal(writes.n, 1, 'a small run: no asynchronous write');
      await rep.target!.close();
    }
  });
});
