#!/usr/bin/env node
// The hub's --cache none applies without the hub around them: 1 MiB aligned writes from a
// buffer pool, one at a time as the apply queue issues them (each awaited, the payload given
// back when write() returns), onto a fresh sparse file through FileVolume with direct writes,
// and an fdatasync every --commit-ms as group commit does; MB/s until the last flush. With
// --base DIR the same run through DIR's build (dist/storage/volume.js), alternating, so the
// storage path is compared where the whole hub's numbers drown in a loaded machine's CPU.
//   node dist/tools/bench/direct-apply.js [--mib 1024] [--reps 3] [--commit-ms 5] [--base DIR] [--dir DIR]
//                                         [--overwrite]
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { randomBytes } from 'node:crypto';
import { BufferPool } from '../../src/buffer-pool';
import { DIRECT_ALIGN } from '../../storage/volume';

const arg = (k: string, d: string) => {
  const i = process.argv.indexOf(`--${k}`);
  return i > 0 ? process.argv[i + 1] : d;
};
const MIB = Number(arg('mib', '1024'));
const REPS = Number(arg('reps', '3'));
const COMMIT_MS = Number(arg('commit-ms', '5'));
const BASE = arg('base', '');
const DIR = arg('dir', os.tmpdir());
const OVERWRITE = process.argv.includes('--overwrite'); // the file written in full first (no allocation)

interface Vol {
  write(b: Buffer, o: number): Promise<void>;
  flush(): Promise<void>;
  close(): Promise<void>;
}
type Open = (p: string, o: object) => Vol;

async function once(open: Open): Promise<number> {
  const file = path.join(fs.mkdtempSync(path.join(DIR, 'rephub-direct-')), 'rep.img');
  const pool = new BufferPool((1 << 20) + 1024, 16, DIRECT_ALIGN);
  const v = open(file, { createSize: MIB << 20, direct: true, holds: pool });
  const data = randomBytes(1 << 20);
  if (OVERWRITE) {
    const fd = fs.openSync(file, 'r+');
    for (let i = 0; i < MIB; i++) fs.writeSync(fd, data, 0, data.length, i << 20);
    fs.fdatasyncSync(fd);
    fs.closeSync(fd);
  }
  const t0 = process.hrtime.bigint();
  let lastCommit = Date.now(),
    commit: Promise<void> | null = null;
  for (let i = 0; i < MIB; i++) {
    const b = pool.take(1 << 20, 0);
    data.copy(b);
    await v.write(b, i << 20);
    pool.give(b);
    if (!commit && Date.now() - lastCommit >= COMMIT_MS) {
      lastCommit = Date.now();
      commit = v.flush().then(() => void (commit = null));
    }
  }
  await commit;
  await v.flush();
  const s = Number(process.hrtime.bigint() - t0) / 1e9;
  await v.close();
  fs.rmSync(path.dirname(file), { recursive: true, force: true });
  return Math.round(MIB / s / 1.048576);
}

async function main(): Promise<void> {
  const mine: Open = (p, o) => require('../../storage/volume').FileVolume.open(p, o);
  const variants: [string, Open][] = [['this build', mine]];
  if (BASE)
    variants.push([BASE, (p, o) => require(path.resolve(BASE, 'dist/storage/volume.js')).FileVolume.open(p, o)]);
  const got = new Map<string, number[]>(variants.map(([n]) => [n, []]));
  for (let r = 1; r <= REPS; r++) {
    const line: string[] = [];
    for (const [name, open] of variants) {
      const mbs = await once(open);
      got.get(name)!.push(mbs);
      line.push(`${name} ${mbs} MB/s`);
    }
    console.log(`rep ${r}: ${line.join(', ')}`);
  }
  for (const [name, v] of got) console.log(`MEDIAN ${name}: ${v.sort((a, b) => a - b)[v.length >> 1]} MB/s`);
}

void main();
