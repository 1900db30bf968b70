// How long `failover-test start --at` takes to make a point ready: the journal view of a 1 GiB
// volume at a 10-minute-old checkpoint (one scan of every record after it) plus the test's COW
// layer above it, as src/hub/failover-at.ts builds them. The journal after the point: 120
// interval checkpoints (one per 5 s) and a 4 KiB before-image of every block of the volume in
// random order (1 GiB of journal, the worst case for the view's index), or, with --mib, 1 MiB
// before-images. Usage: node dist/tools/bench/at-view-ready.js [--gib N] [--mib]
import * as fs from 'node:fs';
import * as path from 'node:path';
import { Journal } from '../../storage/journal';
import { JournalView } from '../../storage/journal-view';
import { PointInTimeView } from '../../storage/overlay';
import { FileVolume } from '../../storage/volume';
import { tmpdir } from '../../test/harness/util';
import { Rng } from '../../test/harness/prng';

const MiB = 1 << 20;

async function main(): Promise<void> {
  const gib = Number(process.argv[process.argv.indexOf('--gib') + 1]) || 1;
  const record = process.argv.includes('--mib') ? MiB : 4096;
  const size = gib * 1024 * MiB;
  const dir = tmpdir();
  const file = path.join(dir, 'V1R');
  fs.writeFileSync(file, '');
  fs.truncateSync(file, size);
  const j = Journal.open(path.join(dir, 'journal'), { segmentBytes: 64 * MiB });
  const vol = j.volumeIndex('V1');
  const blocks = size / record;
  const order = Array.from({ length: blocks }, (_, i) => i);
  const rnd = new Rng(5);
  for (let i = blocks - 1; i > 0; i--) {
    const k = rnd.int(i + 1);
    [order[i], order[k]] = [order[k], order[i]];
  }
  const start = Date.now() - 10 * 60_000;
  const epochs = 120,
    per = Math.ceil(blocks / epochs);
  const img = Buffer.alloc(record, 0x5a);
  const t0 = Date.now();
  const first = j.appendCheckpoint('interval', '', start);
  for (let e = 0; e < epochs; e++) {
    if (e) j.appendCheckpoint('interval', '', start + e * 5000);
    for (const b of order.slice(e * per, (e + 1) * per)) j.appendBefore(vol, b * record, img);
  }
  await j.sync();
  const fill = Date.now() - t0;
  const base = FileVolume.open(file, { readOnly: true });
  const runs = 5;
  const times: number[] = [];
  for (let r = 0; r < runs; r++) {
    const t1 = process.hrtime.bigint();
    const view = new JournalView(base, j, vol, first);
    const cow = new PointInTimeView(view, path.join(dir, `test-${r}`), 1 << 20);
    const probe = Buffer.alloc(4096);
    await cow.read(probe, 0);
    times.push(Number(process.hrtime.bigint() - t1) / 1e6);
    await cow.discard();
    await view.close();
  }
  const sorted = [...times].sort((a, b) => a - b);
  console.log(
    JSON.stringify({
      volumeGiB: gib,
      recordBytes: record,
      records: blocks,
      journalMiB: Math.round(j.bytes / MiB),
      pointAgeMin: Math.round((Date.now() - first.time) / 60_000),
      fillMs: fill,
      readyMs: times.map((x) => Math.round(x)),
      medianReadyMs: Math.round(sorted[Math.floor(runs / 2)]),
    }),
  );
  await base.close();
  j.close();
  fs.rmSync(dir, { recursive: true, force: true });
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
