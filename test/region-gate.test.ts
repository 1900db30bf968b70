// RegionGate.clearQuiet, the range form a report's ack uses (a fresh volume's report covers all
// of it), against clearIfQuiet region by region: the same bits in memory and the same bits in
// the log file after a durable sync, for random dirty logs (hot extents, wide marks) and random
// holders (single regions, as in-flight writes are, and runs, as owed reports are).
import { strict as assert } from 'node:assert';
import fc from 'fast-check';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { DirtyBitmap } from '../storage/bitmap';
import { DirtyLog } from '../storage/dirty-log';
import { RegionGate, dirtyRunsIn, keysIn } from '../src/agent/region-gate';
import type { RegionHolder } from '../src/agent/ports';
import type { AgentVolume } from '../src/agent/volume';

const RS = 64 * 1024;
const REGIONS = 200; // 50 extents of 4 regions: several 4-KiB bitmap words, not one page
const OPTS = { extentBytes: 4 * RS, maxExtents: 8 };

/** A holder as the agent's are: single regions in a map (writes) and runs in a bitmap (reports). */
function holder(singles: number[], runs: [number, number][]): RegionHolder {
  const map = new Map(singles.map((r) => [r, 1]));
  const bm = new DirtyBitmap(REGIONS * RS, RS);
  for (const [a, n] of runs) bm.setRegions(a, Math.min(REGIONS - 1, a + n));
  return {
    holds: (_v, r) => map.has(r) || bm.get(r),
    heldRuns: (_v, first, last, out) => {
      keysIn(map, first, last, out);
      dirtyRunsIn(bm, first, last, out);
    },
  };
}

const region = fc.nat(REGIONS - 1);
const scenario = fc.record({
  marks: fc.array(fc.tuple(region, fc.nat(60), fc.boolean()), { maxLength: 20 }),
  holders: fc.array(
    fc.tuple(fc.array(region, { maxLength: 6 }), fc.array(fc.tuple(region, fc.nat(30)), { maxLength: 4 })),
    { maxLength: 3 },
  ),
  first: region,
  span: fc.nat(REGIONS),
});

describe('RegionGate.clearQuiet', () => {
  let dir: string;
  before(() => (dir = fs.mkdtempSync(path.join(os.tmpdir(), 'rephub-gate-'))));
  after(() => fs.rmSync(dir, { recursive: true, force: true }));

  it('clears what clearIfQuiet clears, region for region, in memory and in the file', () => {
    let n = 0;
    fc.assert(
      fc.property(scenario, ({ marks, holders, first, span }) => {
        const last = Math.min(REGIONS - 1, first + span);
        const logs = ['runs', 'each'].map((k) => {
          const file = path.join(dir, `${k}-${n}`);
          const log = DirtyLog.open(file, REGIONS * RS, RS, true, OPTS);
          log.sync(true);
          log.clearRange(0, REGIONS - 1); // start clean, then the marks (hot extents, wide ones)
          for (const [a, len, held] of marks) {
            const end = Math.min(REGIONS, a + len + 1) * RS;
            log.mark(a * RS, end, held);
            if (held) log.landed(a * RS, end);
          }
          log.sync(true);
          return { log, file };
        });
        n++;
        const gate = new RegionGate();
        for (const [singles, runs] of holders) gate.watch(holder(singles, runs));
        const vol = (log: DirtyLog) => ({ index: 0, log }) as unknown as AgentVolume;
        const [a, b] = logs;
        gate.clearQuiet(vol(a.log), first, last);
        for (let r = first; r <= last; r++) gate.clearIfQuiet(vol(b.log), r);
        assert.deepEqual([...a.log.bitmap.runs()], [...b.log.bitmap.runs()], 'the same regions clean in memory');
        assert.equal(a.log.persistedDirtyBytes, b.log.persistedDirtyBytes, 'the same bits for the file');
        for (const l of logs) l.log.sync(true);
        const files = logs.map((l) => {
          l.log.close();
          const again = DirtyLog.open(l.file, REGIONS * RS, RS, true, OPTS);
          const runs = [...again.bitmap.runs()];
          again.close();
          return runs;
        });
        assert.deepEqual(files[0], files[1], 'the same regions dirty in the file');
      }),
      { numRuns: 150 },
    );
  });

  it('keeps a held region dirty and clears the rest of a volume-wide range', () => {
    const log = DirtyLog.memory(REGIONS * RS, RS, OPTS);
    log.bitmap.setRegions(0, REGIONS - 1);
    const gate = new RegionGate();
    gate.watch(holder([7, 150], [[40, 9]]));
    gate.clearQuiet({ index: 0, log } as unknown as AgentVolume, 0, REGIONS - 1);
    assert.deepEqual(
      [...log.bitmap.runs()],
      [
        [7, 8],
        [40, 50],
        [150, 151],
      ],
    );
  });
});
