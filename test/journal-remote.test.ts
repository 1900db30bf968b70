// The journal's capture over a remote volume (an RBD image's write window, here over memory with
// reads we complete by hand): the before-image read does not hold up the caller (the apply
// queue), the overwrite is submitted only once its before-image is recorded, with the bytes
// given even if the caller reused its buffer, the journal counts the capture until then (no
// point may be appended ahead of its record), and a view at the point reads the old bytes.
import { strict as assert } from 'node:assert';
import * as path from 'node:path';
import { Journal } from '../storage/journal';
import { JournalTarget } from '../storage/journal-target';
import { JournalView } from '../storage/journal-view';
import { WriteWindow } from '../storage/write-window';
import type { BlockTarget } from '../storage/volume';
import { tmpdir } from './harness/util';

const MiB = 1 << 20;
const tick = () => new Promise((r) => setImmediate(r));

/** A remote image over memory: writes land at once, reads wait for release() (one round trip each). */
class SlowReads implements BlockTarget {
  readonly data: Buffer;
  readonly window = new WriteWindow();
  writesSubmitted = 0;
  private held: (() => void)[] = [];
  constructor(readonly sizeBytes: number) {
    this.data = Buffer.alloc(sizeBytes);
  }
  release(): void {
    for (const h of this.held.splice(0)) h();
  }
  get readsHeld(): number {
    return this.held.length;
  }
  private rawRead(buf: Buffer, offset: number): Promise<void> {
    return new Promise((r) => this.held.push(() => (this.data.copy(buf, 0, offset, offset + buf.length), r())));
  }
  private rawWrite(buf: Buffer, offset: number): Promise<void> {
    this.writesSubmitted++;
    buf.copy(this.data, offset);
    return Promise.resolve();
  }
  read(buf: Buffer, offset: number): Promise<void> {
    return this.window.read(offset, offset + buf.length, () => this.rawRead(buf, offset));
  }
  readThen(buf: Buffer, offset: number, then: (e: Error | null) => void): void {
    void this.window.read(offset, offset + buf.length, () => this.rawRead(buf, offset).then(() => then(null)));
  }
  write(buf: Buffer, offset: number): Promise<void> {
    return this.window.add(
      offset,
      buf.length,
      () => this.rawWrite(buf, offset),
      () => {
        const own = Buffer.from(buf);
        return () => this.rawWrite(own, offset);
      },
    );
  }
  flush(): Promise<void> {
    return this.window.drain();
  }
  close(): Promise<void> {
    return this.window.drain();
  }
}

describe('journal capture over a remote volume (RBD)', () => {
  it('reads the before-image in the window: the caller goes on, the overwrite waits for the record', async () => {
    const dir = tmpdir();
    const j = Journal.open(path.join(dir, 'journal'), { segmentBytes: 16 * MiB });
    const vol = new SlowReads(4 * MiB);
    vol.data.fill(0x11, 0, 2 * MiB); // what the image held before the point
    const t = new JournalTarget(vol, 'rbd:p/v1', () => ({ journal: j, vol: j.volumeIndex('V1') }));
    const cp = j.appendCheckpoint('flush');
    const buf = Buffer.alloc(MiB, 0x22);
    await t.write(buf, 0); // returns with the read still out: the apply queue is not held
    buf.fill(0x33); // the caller reuses its buffer (a pooled payload)
    await t.write(Buffer.alloc(MiB, 0x44), MiB); // a second write, its own read in flight too
    assert.equal(vol.readsHeld, 2, 'both before-image reads are in flight at once');
    assert.equal(vol.writesSubmitted, 0, 'no overwrite is submitted before its before-image is read');
    assert.equal(j.capturesPending, 2, 'the journal counts the captures: no point until they are recorded');
    let captured = false;
    const done = j.captured().then(() => (captured = true));
    const bytesBefore = j.bytes;
    await tick();
    assert.equal(captured, false);
    vol.release();
    await done;
    assert.ok(j.bytes - bytesBefore >= 2 * MiB, 'both before-images were appended');
    await t.flush();
    assert.equal(vol.writesSubmitted, 2);
    assert.ok(vol.data.subarray(0, MiB).equals(Buffer.alloc(MiB, 0x22)), 'the bytes given, not the reused buffer');
    assert.ok(vol.data.subarray(MiB, 2 * MiB).equals(Buffer.alloc(MiB, 0x44)));
    const view = new JournalView(vol, j, 0, cp);
    const got = Buffer.alloc(2 * MiB);
    let read = false;
    const reading = view.read(got, 0).then(() => (read = true));
    for (let i = 0; i < 100 && !read; i++) {
      vol.release(); // the view's reads of the present
      await tick();
    }
    await reading;
    assert.ok(got.equals(Buffer.alloc(2 * MiB, 0x11)), 'the view at the point reads what the image held then');
    await view.close();
    await t.close();
    j.close();
  });
});
