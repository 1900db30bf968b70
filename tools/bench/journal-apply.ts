#!/usr/bin/env node
// The hub's small-write apply through the journal's capture filter, without the hub around it:
// random 4 KiB writes in batches of --batch (one socket read's worth at qd16), each batch
// announced first (prepareWrite, where the build has it: the session does that for a read's
// writes) and then written synchronously, as applyNow does, onto a recovery file with a journal
// and a checkpoint every --epoch writes; CPU microseconds (user, sys) per write from
// process.cpuUsage. With --base DIR the same through DIR's build, alternating, so the storage
// path is compared where the whole hub's numbers drown in a loaded machine's noise.
//   node dist/tools/bench/journal-apply.js [--writes 50000] [--batch 16] [--epoch 20000] [--reps 3]
//                                          [--base DIR] [--fill] [--dir DIR]
//   --fill: the recovery file holds data (every before-image is read); else fresh and sparse,
//   with the hub's known-zero map under the filter (ZERO records until a region is written).
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { randomBytes } from 'node:crypto';

const arg = (k: string, d: string) => {
  const i = process.argv.indexOf(`--${k}`);
  return i > 0 ? process.argv[i + 1] : d;
};
const WRITES = Number(arg('writes', '50000'));
const BATCH = Number(arg('batch', '16'));
const EPOCH = Number(arg('epoch', '20000'));
const REPS = Number(arg('reps', '3'));
const BASE = arg('base', '');
const DIR = arg('dir', os.tmpdir());
const FILL = process.argv.includes('--fill');
const SIZE = 256 << 20;

function load(root: string) {
  const d = path.join(root, 'dist', 'storage');
  return {
    Journal: require(path.join(d, 'journal.js')).Journal,
    JournalTarget: require(path.join(d, 'journal-target.js')).JournalTarget,
    FileVolume: require(path.join(d, 'volume.js')).FileVolume,
    tracking: require(path.join(d, 'tracking.js')),
  };
}

function once(m: ReturnType<typeof load>): { user: number; sys: number } {
  const dir = fs.mkdtempSync(path.join(DIR, 'rephub-japply-'));
  const file = path.join(dir, 'V1R');
  const data = randomBytes(1 << 20);
  fs.writeFileSync(file, '');
  fs.truncateSync(file, SIZE);
  if (FILL) {
    const fd = fs.openSync(file, 'r+');
    for (let o = 0; o < SIZE; o += data.length) fs.writeSync(fd, data, 0, data.length, o);
    fs.fdatasyncSync(fd); // no writeback of the fill during the run
    fs.closeSync(fd);
  }
  const j = m.Journal.open(path.join(dir, 'journal'), { segmentBytes: 64 << 20 });
  const vol = m.FileVolume.open(file);
  const below = FILL ? vol : new m.tracking.TrackedTarget(vol, new m.tracking.KnownZeroMap(SIZE, 64 << 10));
  const t: any = new m.JournalTarget(below, file, () => ({ journal: j, vol: j.volumeIndex('V1') }));
  const offs = new Float64Array(BATCH);
  let seed = 12345;
  const rnd = () => ((seed = (Math.imul(seed, 1103515245) + 12345) >>> 0) % (SIZE / 4096)) * 4096;
  const c0 = process.cpuUsage();
  for (let done = 0; done < WRITES; done += BATCH) {
    for (let i = 0; i < BATCH; i++) offs[i] = rnd();
    if (t.prepareWrite) for (let i = 0; i < BATCH; i++) t.prepareWrite(offs[i], offs[i] + 4096);
    for (let i = 0; i < BATCH; i++) t.writeSync(data.subarray(i * 4096, (i + 1) * 4096), offs[i]);
    if (done % EPOCH < BATCH) j.appendCheckpoint('flush');
  }
  const c = process.cpuUsage(c0);
  j.close();
  fs.rmSync(dir, { recursive: true, force: true });
  return { user: c.user / WRITES, sys: c.system / WRITES };
}

const builds: [string, ReturnType<typeof load>][] = [['this', load(path.join(__dirname, '..', '..', '..'))]];
if (BASE) builds.push(['base', load(BASE)]);
const res = new Map<string, number[]>();
for (let r = 0; r < REPS; r++)
  for (const [name, m] of r % 2 ? [...builds].reverse() : builds) {
    const x = once(m);
    res.set(name, [...(res.get(name) ?? []), x.user + x.sys]);
    console.log(`rep ${r + 1} ${name}: ${x.user.toFixed(2)} user + ${x.sys.toFixed(2)} sys us per write`);
  }
const median = (a: number[]) => [...a].sort((x, y) => x - y)[Math.floor(a.length / 2)];
for (const [name, v] of res) console.log(`${name}: median ${median(v).toFixed(2)} us per write (user+sys)`);
