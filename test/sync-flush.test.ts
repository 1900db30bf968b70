// The policy that lets a guest flush sync the image on the agent's event loop (src/agent/sync-flush.ts)
// and the agent's flushNow over a real image file (src/agent/write-path.ts), no hub connected.
import { strict as assert } from 'node:assert';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { SyncFlushPolicy, SYNC_FLUSH_SLOW_MS, BACKOFF_MIN_MS, BACKOFF_MAX_MS } from '../src/agent/sync-flush';
import { ReplicationAgent } from '../src/agent/agent';
import { FileVolume } from '../storage/volume';
import type { BlockTarget } from '../storage/volume';
import { DirtyLog } from '../storage/dirty-log';
import { silentLogger } from '../src/log';
import { tmpdir } from './harness/util';

/** A real image file whose synchronous flush is counted, and fails while `failing` is set. */
function countedImage(file: string) {
  const inner = FileVolume.open(file);
  const t = {
    syncs: 0,
    failing: false,
    get sizeBytes() {
      return inner.sizeBytes;
    },
    read: (b: Buffer, o: number) => inner.read(b, o),
    write: (b: Buffer, o: number) => inner.write(b, o),
    writeSync: (b: Buffer, o: number) => inner.writeSync(b, o),
    flush: () => inner.flush(),
    flushSync: () => {
      if (t.failing) throw Object.assign(new Error('EIO: i/o error, fdatasync'), { code: 'EIO' });
      t.syncs++;
      inner.flushSync();
    },
    close: () => inner.close(),
  };
  return t;
}

/** An agent over one image, never started (no hub): its write path alone. */
function agentOver(target: unknown, vm: string, loopFlushMaxMs?: number): ReplicationAgent {
  return new ReplicationAgent({
    hubHost: '127.0.0.1',
    hubPort: 1, // never started: no hub
    vm,
    log: silentLogger(),
    volumes: [{ name: 'V1', target: target as BlockTarget, log: DirtyLog.memory(1 << 20, 65536) }],
    loopFlushMaxMs,
  });
}

describe('sync flush policy', () => {
  it('allows the loop until a sync is slow, then the threadpool for the backoff, then the loop again', () => {
    const stats = { loopFlushes: 0, slowFlushes: 0 };
    const p = new SyncFlushPolicy(stats, 4);
    assert.equal(p.allowed(0), true);
    p.took(10, 13.9, true); // fast
    assert.equal(p.allowed(14), true);
    p.took(20, 25, true); // slow: 5 ms
    assert.deepEqual(stats, { loopFlushes: 2, slowFlushes: 1 });
    assert.equal(p.allowed(26), false);
    assert.equal(p.allowed(25 + BACKOFF_MIN_MS - 1), false);
    assert.equal(p.allowed(25 + BACKOFF_MIN_MS), true, 'a lone slow sync costs the loop one short backoff');
  });

  it('doubles the backoff while syncs on the loop stay slow, up to its maximum; a fast one resets it', () => {
    const p = new SyncFlushPolicy(null, 4);
    let now = 0,
      wait = BACKOFF_MIN_MS;
    const waits: number[] = [];
    for (let i = 0; i < 10; i++) {
      p.took(now, now + 10, true); // a slow disk: every try on the loop stalls it 10 ms
      now += 10;
      let off = 0;
      while (!p.allowed(now + off)) off++;
      waits.push(off);
      now += off;
    }
    for (const w of waits) {
      assert.equal(w, wait, `backoffs ${waits.join(', ')}`);
      wait = Math.min(BACKOFF_MAX_MS, wait * 2);
    }
    assert.equal(waits[waits.length - 1], BACKOFF_MAX_MS, 'a slow disk stalls the loop at most once a second');
    p.took(now, now + 1, true); // the disk is fast again
    p.took(now + 2, now + 12, true);
    assert.equal(p.allowed(now + 12 + BACKOFF_MIN_MS), true, 'back to the short backoff');
  });

  it('a slow threadpool sync keeps flushes off the loop too, without growing the backoff; not a loop flush', () => {
    const stats = { loopFlushes: 0, slowFlushes: 0 };
    const p = new SyncFlushPolicy(stats, 4);
    p.took(0, 100, false);
    assert.equal(p.allowed(100 + BACKOFF_MIN_MS - 1), false);
    p.took(110, 200, false); // still slow: the backoff restarts from its end
    assert.equal(p.allowed(100 + BACKOFF_MIN_MS), false);
    assert.equal(p.allowed(200 + BACKOFF_MIN_MS), true, 'the same short backoff');
    assert.deepEqual(stats, { loopFlushes: 0, slowFlushes: 2 });
  });

  it('0 never allows the loop; a negative or NaN limit is refused; the default is a few ms', () => {
    assert.equal(new SyncFlushPolicy(null, 0).allowed(1e9), false);
    assert.throws(() => new SyncFlushPolicy(null, -1), /must be >= 0/);
    assert.throws(() => new SyncFlushPolicy(null, NaN), /must be >= 0/);
    assert.ok(SYNC_FLUSH_SLOW_MS > 0 && SYNC_FLUSH_SLOW_MS <= 10);
    assert.equal(new SyncFlushPolicy(null).allowed(0), true);
  });
});

describe("the agent's flushNow (real image file, no hub)", () => {
  let dir: string;
  afterEach(() => fs.rmSync(dir, { recursive: true, force: true }));

  it('syncs the image before returning and counts it; a failing sync throws and backs off to the threadpool', async () => {
    dir = tmpdir();
    const file = path.join(dir, 'V1.img');
    fs.writeFileSync(file, Buffer.alloc(1 << 20));
    const image = countedImage(file);
    const agent = agentOver(image, 'vm1', 1000);
    try {
      assert.equal(agent.writeNow('V1', 4096, Buffer.alloc(4096, 7)), true);
      assert.equal(agent.flushNow('V1'), true);
      assert.deepEqual([image.syncs, agent.stats.loopFlushes, agent.stats.slowFlushes], [1, 1, 0]);
      assert.equal(fs.readFileSync(file)[4096], 7);
      image.failing = true;
      assert.throws(() => agent.flushNow('V1'), /EIO/);
      assert.equal(agent.stats.slowFlushes, 1);
      image.failing = false;
      assert.equal(agent.flushNow('V1'), false, 'after a failure the next flush goes through the threadpool');
      await agent.flush('V1');
      assert.equal(image.syncs, 1);
    } finally {
      await agent.stop(0);
      await image.close();
    }
  });

  it('--loop-flush-max 0 never syncs on the loop; an image without a synchronous flush neither', async () => {
    dir = tmpdir();
    const file = path.join(dir, 'V1.img');
    fs.writeFileSync(file, Buffer.alloc(1 << 20));
    const image = countedImage(file);
    const off = agentOver(image, 'vm1', 0);
    const noSync = agentOver({ ...image, flushSync: undefined, sizeBytes: image.sizeBytes }, 'vm2');
    try {
      assert.equal(off.flushNow('V1'), false);
      assert.equal(noSync.flushNow('V1'), false);
      assert.equal(image.syncs, 0);
    } finally {
      await off.stop(0);
      await noSync.stop(0);
      await image.close();
    }
  });
});
