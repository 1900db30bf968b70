#!/usr/bin/env node
// The hub's 1 MiB ingest into an RBD image against fio's rbd engine on the same one-node cluster
// (test/harness/ceph.ts), alternating in one run: tools/loadgen.ts (an agent over loopback TCP,
// 1 MiB sequential protected writes, counted when acked durable: written and rbd_aio_flush'd)
// into a hub with --vol LG=rbd:…, then fio --ioengine=rbd (1 MiB sequential writes, iodepth 8,
// flush at the end) on a fresh image of the same size. Medians. Not a test: numbers only.
//   node dist/tools/bench/rbd-ingest.js [--reps 3] [--seconds 5] [--size-mib 256]
import { execFileSync } from 'node:child_process';
import * as path from 'node:path';
import { startCeph } from '../../test/harness/ceph';

const arg = (k: string, d: string) => {
  const i = process.argv.indexOf(`--${k}`);
  return i > 0 ? process.argv[i + 1] : d;
};
const REPS = Number(arg('reps', '3'));
const SECONDS = Number(arg('seconds', '5'));
const SIZE_MIB = Number(arg('size-mib', '256'));

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor((xs.length - 1) / 2)];

async function main(): Promise<void> {
  const ceph = await startCeph();
  const env = { ...process.env, CEPH_CONF: ceph.conf };
  const hub: number[] = [],
    fio: number[] = [];
  try {
    for (let r = 1; r <= REPS; r++) {
      const out = execFileSync(
        process.execPath,
        [
          path.join(__dirname, '../loadgen.js'),
          '--workload',
          '1m',
          '--seconds',
          String(SECONDS),
          '--size-mib',
          String(SIZE_MIB),
          '--recovery',
          `rbd:${ceph.pool}/lg-${r}:conf=${ceph.conf}`,
        ],
        { encoding: 'utf8', env, timeout: 300_000 },
      );
      const m = /1 MiB[^\n]*?([\d.]+) MB\/s/.exec(out);
      hub.push(m ? Number(m[1]) : 0);
      ceph.run('rbd', 'create', '--size', `${SIZE_MIB}M`, `${ceph.pool}/fio-${r}`);
      const json = execFileSync(
        'fio',
        [
          '--name=rbd',
          '--ioengine=rbd',
          '--clientname=admin',
          `--pool=${ceph.pool}`,
          `--rbdname=fio-${r}`,
          '--rw=write',
          '--bs=1m',
          '--iodepth=8',
          `--size=${SIZE_MIB}m`,
          '--time_based',
          `--runtime=${SECONDS}`,
          '--end_fsync=1',
          '--output-format=json',
        ],
        { encoding: 'utf8', env, timeout: 300_000 },
      );
      fio.push(Math.floor(JSON.parse(json).jobs[0].write.bw_bytes / 1e6));
      console.log(`rep ${r}: hub 1 MiB ingest into RBD ${hub[r - 1]} MB/s, fio rbd engine ${fio[r - 1]} MB/s`);
      ceph.run('rbd', 'rm', '--no-progress', `${ceph.pool}/lg-${r}`);
      ceph.run('rbd', 'rm', '--no-progress', `${ceph.pool}/fio-${r}`);
    }
  } finally {
    ceph.stop();
  }
  const h = median(hub),
    f = median(fio);
  console.log(`MEDIAN hub ${h} MB/s, fio rbd ${f} MB/s: hub / fio = ${(h / f).toFixed(2)}`);
}

void main().catch((e) => {
  console.error(e);
  process.exit(1);
});
