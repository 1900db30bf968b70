// The policy that lets a guest flush sync the image on the agent's event loop (src/agent/sync-flush.ts)
// and the write path's flushNow over a real file (src/agent/write-path.ts).
import { strict as assert } from 'node:assert';
import { SyncFlushPolicy, SYNC_FLUSH_SLOW_MS } from '../src/agent/sync-flush';

describe('sync flush policy', () => {
  it('allows the loop until a sync is slow, then the threadpool for a second, then the loop again', () => {
    const stats = { loopFlushes: 0, slowFlushes: 0 };
    const p = new SyncFlushPolicy(stats, 4);
    assert.equal(p.allowed(0), true);
    p.took(10, 13.9, true); // fast
    assert.equal(p.allowed(14), true);
    p.took(20, 25, true); // slow: 5 ms
    assert.deepEqual(stats, { loopFlushes: 2, slowFlushes: 1 });
    assert.equal(p.allowed(26), false);
    assert.equal(p.allowed(1024), false);
    assert.equal(p.allowed(1025), true);
  });

  it('a slow threadpool sync keeps flushes off the loop too; it is not counted as a loop flush', () => {
    const stats = { loopFlushes: 0, slowFlushes: 0 };
    const p = new SyncFlushPolicy(stats, 4);
    p.took(0, 100, false);
    assert.equal(p.allowed(600), false);
    p.took(600, 700, false); // still slow: the backoff restarts from its end
    assert.equal(p.allowed(1500), false);
    assert.equal(p.allowed(1700), true);
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
