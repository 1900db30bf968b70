// The dashboard's history rings (src/hub/history.ts): bucketing over a span, unknown seconds as
// null, the bound on what is kept (a ring's length; a volume gone that long is forgotten).
import { strict as assert } from 'node:assert';
import { History, HISTORY_SAMPLES } from '../src/hub/history';

const vol = (name: string, i: number) => ({
  name,
  vm: 'web1',
  rpoLagMs: i % 2 ? null : i,
  throughputBps: 10 * i,
  dirtyBytes: 100 * i,
});

describe('history rings', () => {
  it('buckets the last span: worst lag, mean throughput, most dirty bytes; unknown is null', () => {
    const h = new History(1000);
    for (let i = 0; i < 10; i++) h.sample(1_000_000 + i * 1000, [vol('V1', i)]);
    const all = h.series(5).V1;
    assert.equal(all.vm, 'web1');
    assert.equal(all.stepMs, 2000);
    assert.equal(all.t0, 1_000_000);
    assert.deepEqual(all.rpoLagMs, [0, 2, 4, 6, 8]);
    assert.deepEqual(all.throughputBps, [5, 25, 45, 65, 85]);
    assert.deepEqual(all.dirtyBytes, [100, 300, 500, 700, 900]);
    const last3 = h.series(100, 3000).V1; // the last 3 samples, one point each
    assert.equal(last3.t0, 1_007_000);
    assert.deepEqual(last3.rpoLagMs, [null, 8, null]);
    assert.deepEqual(last3.dirtyBytes, [700, 800, 900]);
    assert.deepEqual(Object.keys(h.series(10, 5000, 'nope')), []);
  });

  it('keeps one ring length, and forgets a volume gone from status for that long', () => {
    const h = new History(1000);
    h.sample(0, [vol('V1', 0), vol('V2', 0)]);
    for (let i = 1; i < HISTORY_SAMPLES + 10; i++) h.sample(i * 1000, [vol('V1', i)]);
    const s = h.series(HISTORY_SAMPLES, h.limitMs + 60_000);
    assert.equal(s.V1.throughputBps.length, HISTORY_SAMPLES, 'no more than the ring holds');
    assert.equal(s.V1.throughputBps[0], 10 * 10, 'the oldest kept is 10 samples in');
    assert.equal(s.V2, undefined, 'V2 forgotten');
  });
});
