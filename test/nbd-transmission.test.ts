// NBD transmission without a socket (src/nbd/transmission.ts), the export registry's removal
// (src/nbd/exports.ts) and the change-tracking filter (storage/tracking.ts).
import { strict as assert } from 'node:assert';
import { Transmission, TransmissionIo, MAX_INFLIGHT, errnoOf } from '../src/nbd/transmission';
import { ExportRegistry, NbdExport, TargetExport, ExportUser } from '../src/nbd/exports';
import { ByteQueue } from '../src/nbd/byte-queue';
import { TrackedTarget, KnownZeroMap } from '../storage/tracking';
import { MemoryVolume, VolumeError } from '../storage/volume';
import { DirtyBitmap } from '../storage/bitmap';
import { REQUEST_MAGIC, NbdCmd, NbdErr, CMD_FLAG_FUA } from '../protocol/nbd';
import { makeLogger } from '../src/log';

function request(type: number, handle: number, offset: number, length: number, flags = 0): Buffer {
  const b = Buffer.alloc(28);
  b.writeUInt32BE(REQUEST_MAGIC, 0);
  b.writeUInt16BE(flags, 4);
  b.writeUInt16BE(type, 6);
  b.writeBigUInt64BE(BigInt(handle), 8);
  b.writeBigUInt64BE(BigInt(offset), 16);
  b.writeUInt32BE(length, 24);
  return b;
}

class FakeIo implements TransmissionIo {
  replies: { error: number; handle: number; data?: Buffer }[] = [];
  paused = false;
  ended = false;
  closed = false;
  fatalWhy: string | null = null;
  onResume: () => void = () => {};
  reply(error: number, hi: number, lo: number): void {
    this.replies.push({ error, handle: hi * 2 ** 32 + lo });
  }
  replyData(hi: number, lo: number, data: Buffer): void {
    this.replies.push({ error: 0, handle: hi * 2 ** 32 + lo, data: Buffer.from(data) });
  }
  pause(): void {
    this.paused = true;
  }
  resume(): void {
    this.paused = false;
    this.onResume();
  }
  end(): void {
    this.ended = true;
  }
  fatal(why: string): void {
    this.fatalWhy = why;
    this.closed = true;
  }
}

/** An export over memory whose async writes wait until released, and with a writeNow. */
class HeldExport implements NbdExport {
  readonly name = 'V1';
  readonly target = new MemoryVolume(1 << 20);
  held: (() => void)[] = [];
  writesNow = 0;
  flushes = 0;
  useWriteNow = true;
  get sizeBytes(): number {
    return this.target.sizeBytes;
  }
  read(buf: Buffer, offset: number): Promise<void> {
    return this.target.read(buf, offset);
  }
  write(buf: Buffer, offset: number): Promise<void> {
    const copy = Buffer.from(buf);
    return new Promise((resolve) =>
      this.held.push(() => {
        copy.copy(this.target.data, offset);
        resolve();
      }),
    );
  }
  writeNow(buf: Buffer, offset: number): boolean {
    if (!this.useWriteNow) return false;
    buf.copy(this.target.data, offset);
    this.writesNow++;
    return true;
  }
  zero(offset: number, length: number): Promise<void> {
    this.target.data.fill(0, offset, offset + length);
    return Promise.resolve();
  }
  flush(): Promise<void> {
    this.flushes++;
    return Promise.resolve();
  }
  release(): void {
    for (const h of this.held.splice(0)) h();
  }
}

const tick = () => new Promise((r) => setImmediate(r));
const stats = () => ({ connections: 0, requests: 0, errors: 0, inflight: 0 });
const log = makeLogger('test', 'silent');

/** HeldExport with a flushNow: done at once (true), declined (false) or failing (an error). */
class NowFlushExport extends HeldExport {
  flushesNow = 0;
  now: boolean | Error = true;
  flushNow(): boolean {
    if (this.now instanceof Error) throw this.now;
    if (this.now) this.flushesNow++;
    return this.now;
  }
}

function setup(exp: NbdExport = new HeldExport(), shared = stats(), direct = false) {
  const q = new ByteQueue(),
    io = new FakeIo();
  const t = new Transmission(exp, q, io, { direct, stats: shared, log });
  io.onResume = () => t.parse();
  const push = (...b: Buffer[]) => {
    for (const x of b) q.push(x);
    t.parse();
  };
  return { q, io, t, push };
}

describe('NBD transmission (no socket)', () => {
  it('a small write goes through writeNow and is replied at once; a read returns the data', async () => {
    const exp = new HeldExport();
    const { io, push } = setup(exp);
    push(request(NbdCmd.WRITE, 1, 4096, 4), Buffer.from([1, 2, 3, 4]));
    assert.deepEqual(io.replies, [{ error: 0, handle: 1 }]);
    assert.equal(exp.writesNow, 1);
    push(request(NbdCmd.READ, 2, 4096, 4));
    await tick();
    assert.deepEqual(io.replies[1], { error: 0, handle: 2, data: Buffer.from([1, 2, 3, 4]) });
  });

  it("the queue says when a chunk was lent (a small write's view) or only parsed and copied (a large write in place)", async () => {
    // An export that keeps the caller's buffer until the write lands, as a write in flight does:
    // a chunk reused too early (src/net-read.ts reuses one the connection says is not lent) shows.
    class KeepingExport extends HeldExport {
      override write(buf: Buffer, offset: number): Promise<void> {
        return new Promise((resolve) =>
          this.held.push(() => {
            buf.copy(this.target.data, offset);
            resolve();
          }),
        );
      }
    }
    const exp = new KeepingExport();
    exp.useWriteNow = false;
    const { q, io, t } = setup(exp, stats(), true);
    const feed = (c: Buffer): boolean => {
      q.lent = false;
      q.push(c);
      t.parse();
      return q.lent || q.length > 0;
    };
    const big = Buffer.alloc(256 * 1024, 7),
      small = Buffer.alloc(4096, 9);
    const first = Buffer.concat([request(NbdCmd.WRITE, 1, 0, big.length), big.subarray(0, 40 * 1024)]);
    assert.equal(feed(first), false, "header parsed, data copied into the write's own buffer");
    first.fill(0xee); // the reader reuses it
    assert.equal(feed(Buffer.from(big.subarray(40 * 1024))), false);
    const chunk = Buffer.concat([request(NbdCmd.WRITE, 2, 512 * 1024, small.length), small]);
    assert.equal(feed(chunk), true, 'a small write keeps a view of its chunk');
    assert.equal(feed(request(NbdCmd.WRITE, 3, 768 * 1024, 8).subarray(0, 10)), true, 'part of a header stays queued');
    exp.release();
    await tick();
    assert.deepEqual(
      io.replies.map((r) => r.handle),
      [1, 2],
    );
    assert.ok(exp.target.data.subarray(0, big.length).equals(big), 'the large write is intact');
    assert.ok(exp.target.data.subarray(512 * 1024, 512 * 1024 + small.length).equals(small));
  });

  it('FUA skips writeNow and flushes before the reply; out-of-range requests get their errno', async () => {
    const exp = new HeldExport();
    const { io, push } = setup(exp);
    push(request(NbdCmd.WRITE, 1, 0, 2, CMD_FLAG_FUA), Buffer.from([9, 9]));
    assert.equal(io.replies.length, 0);
    exp.release();
    await tick();
    assert.deepEqual(io.replies, [{ error: 0, handle: 1 }]);
    assert.equal(exp.flushes, 1);
    push(request(NbdCmd.WRITE, 2, (1 << 20) - 1, 2), Buffer.from([1, 1]));
    push(request(NbdCmd.READ, 3, 1 << 20, 1));
    push(request(NbdCmd.WRITE_ZEROES, 4, 1 << 20, 1));
    assert.deepEqual(
      io.replies.slice(1).map((r) => r.error),
      [NbdErr.ENOSPC, NbdErr.EINVAL, NbdErr.ENOSPC],
    );
  });

  it("a flush that is the server's only request goes through flushNow and is replied at once", async () => {
    const exp = new NowFlushExport();
    const { io, push } = setup(exp);
    push(request(NbdCmd.WRITE, 1, 0, 2), Buffer.from([7, 7]));
    push(request(NbdCmd.FLUSH, 2, 0, 0));
    assert.deepEqual(io.replies, [
      { error: 0, handle: 1 },
      { error: 0, handle: 2 },
    ]); // no tick: synchronous
    assert.deepEqual([exp.flushesNow, exp.flushes], [1, 0]);
    exp.now = false; // declined (a slow disk lately): the threadpool flush
    push(request(NbdCmd.FLUSH, 3, 0, 0));
    await tick();
    assert.deepEqual([exp.flushesNow, exp.flushes, io.replies.length], [1, 1, 3]);
  });

  it('a flush with any request in flight, on this connection or another, takes the async flush', async () => {
    const exp = new NowFlushExport();
    exp.useWriteNow = false; // writes are held until released: in flight
    const shared = stats();
    const a = setup(exp, shared),
      b = setup(exp, shared);
    a.push(request(NbdCmd.WRITE, 1, 0, 2), Buffer.from([1, 1]));
    a.push(request(NbdCmd.FLUSH, 2, 0, 0));
    b.push(request(NbdCmd.FLUSH, 3, 0, 0));
    await tick();
    assert.equal(exp.flushesNow, 0);
    assert.equal(exp.flushes, 2);
    assert.deepEqual([a.io.replies.map((r) => r.handle), b.io.replies.map((r) => r.handle)], [[2], [3]]);
    exp.release();
    await tick();
    assert.equal(shared.inflight, 0);
    b.push(request(NbdCmd.FLUSH, 4, 0, 0)); // nothing in flight anywhere now
    assert.equal(exp.flushesNow, 1);
    assert.deepEqual(b.io.replies[1], { error: 0, handle: 4 });
  });

  it('a failing flushNow gets an error reply; the connection serves on', async () => {
    const exp = new NowFlushExport();
    exp.now = new VolumeError('flush of V1 failed: EIO', '/img/V1', 0, 'EIO');
    const { io, push } = setup(exp);
    push(request(NbdCmd.FLUSH, 1, 0, 0));
    assert.deepEqual(io.replies, [{ error: NbdErr.EIO, handle: 1 }]);
    exp.now = true;
    push(request(NbdCmd.WRITE, 2, 8, 1), Buffer.from([5]), request(NbdCmd.FLUSH, 3, 0, 0));
    assert.deepEqual(
      io.replies.slice(1).map((r) => [r.handle, r.error]),
      [
        [2, 0],
        [3, 0],
      ],
    );
    assert.equal(io.closed, false);
  });

  it(`flow control: reading pauses at ${MAX_INFLIGHT} in flight, resumes below half; one reply each`, async () => {
    const exp = new HeldExport();
    exp.useWriteNow = false;
    const { io, t, push } = setup(exp);
    const n = MAX_INFLIGHT + 10;
    for (let i = 0; i < n; i++) push(request(NbdCmd.WRITE, i, i * 8, 8), Buffer.alloc(8, i));
    assert.equal(exp.held.length, MAX_INFLIGHT);
    assert.equal(io.paused, true);
    const idle = t.idle();
    exp.release();
    await tick();
    exp.release();
    await tick();
    assert.equal(io.paused, false);
    await idle;
    const handles = io.replies.map((r) => r.handle).sort((a, b) => a - b);
    assert.deepEqual(handles, [...Array(n).keys()], 'exactly one reply per request');
  });

  it('DISC ends the connection once the last reply is out; a bad magic is fatal', async () => {
    const exp = new HeldExport();
    exp.useWriteNow = false;
    const { io, push } = setup(exp);
    push(request(NbdCmd.WRITE, 1, 0, 1), Buffer.alloc(1), request(NbdCmd.DISC, 2, 0, 0));
    assert.equal(io.ended, false);
    exp.release();
    await tick();
    assert.equal(io.ended, true);
    const bad = setup();
    bad.push(Buffer.alloc(28));
    assert.match(bad.io.fatalWhy!, /bad NBD request magic/);
  });

  it('errno mapping: VolumeError codes and Node error codes', () => {
    assert.equal(errnoOf(new VolumeError('full', '/x', 0, 'ENOSPC'), NbdErr.EIO), NbdErr.ENOSPC);
    assert.equal(errnoOf(Object.assign(new Error('ro'), { errno: -30, code: 'EROFS' }), NbdErr.EIO), NbdErr.EPERM);
    assert.equal(errnoOf(new Error('odd'), NbdErr.EINVAL), NbdErr.EINVAL);
  });
});

describe('export registry', () => {
  it('remove() detaches every connection on that export and waits for them; others stay', async () => {
    const reg = new ExportRegistry();
    reg.add(new TargetExport('V1', new MemoryVolume(4096)));
    reg.add(new TargetExport('V2', new MemoryVolume(4096)));
    const detached: string[] = [];
    let finish!: () => void;
    const slow: ExportUser = {
      detach: (why) => {
        detached.push(`slow ${why}`);
        return new Promise((r) => (finish = r));
      },
    };
    const other: ExportUser = {
      detach: (why) => {
        detached.push(`other ${why}`);
        return Promise.resolve();
      },
    };
    assert.ok(reg.attach('V1', slow));
    assert.ok(reg.attach('V2', other));
    let removed = false;
    const p = reg.remove('V1').then(() => (removed = true));
    await tick();
    assert.deepEqual(detached, ['slow export removed']);
    assert.equal(removed, false, 'remove waits for the requests still running');
    finish();
    await p;
    assert.equal(reg.get('V1'), undefined);
    assert.equal(reg.attach('V1', slow), undefined);
    assert.deepEqual(reg.names(), ['V2']);
  });

  it('whenIdle() resolves when the last client of the named exports closes, or at its timeout', async () => {
    const reg = new ExportRegistry();
    reg.add(new TargetExport('V1', new MemoryVolume(4096)));
    reg.add(new TargetExport('V2', new MemoryVolume(4096)));
    const user = (): ExportUser => ({ detach: () => Promise.resolve() });
    const [a, b, c] = [user(), user(), user()];
    reg.attach('V1', a);
    reg.attach('V1', b);
    reg.attach('V2', c);
    let idle = false;
    const p = reg.whenIdle(['V1'], 60_000).then(() => (idle = true));
    reg.detach('V1', a);
    reg.detach('V2', c); // another export's client: no matter
    await tick();
    assert.equal(idle, false, 'one client of V1 is still attached');
    reg.detach('V1', b);
    await p; // long before the timeout
    assert.equal(reg.attachedClients('V1'), 0);
    // a client that stays: the wait ends at its timeout and the count is still there to refuse on
    reg.attach('V2', c);
    await reg.whenIdle(['V1', 'V2'], 50);
    assert.equal(reg.attachedClients('V2'), 1);
  });
});

describe('change tracking filter', () => {
  it('marks each write before it reaches the layer below; stacked filters each mark; flush syncs the map', async () => {
    const base = new MemoryVolume(1 << 20);
    const knownZero = new KnownZeroMap(1 << 20, 64 * 1024);
    const changed = new DirtyBitmap(1 << 20, 64 * 1024);
    let synced = 0;
    const recoveryChanged = { mark: (a: number, b: number) => changed.setBytes(a, b), sync: () => synced++ };
    const stack = new TrackedTarget(new TrackedTarget(base, knownZero), recoveryChanged);
    assert.ok(knownZero.covers(0, 1 << 20));
    await stack.write(Buffer.alloc(10, 1), 70 * 1024);
    assert.equal(changed.dirtyRegions, 1);
    assert.ok(changed.get(1));
    assert.equal(knownZero.covers(64 * 1024, 128 * 1024), false);
    assert.ok(knownZero.covers(0, 64 * 1024) && knownZero.covers(128 * 1024, 1 << 20));
    assert.equal(base.data[70 * 1024], 1);
    await stack.flush();
    assert.equal(synced, 1);
    assert.equal(stack.writeSync, undefined, 'no fast path where the layer below has none');
  });
});
