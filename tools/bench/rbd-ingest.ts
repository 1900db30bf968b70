#!/usr/bin/env node
// The hub's 1 MiB ingest into an RBD image against fio's rbd engine on the same one-node cluster
// (test/harness/ceph.ts), alternating in one run: tools/loadgen.ts (an agent over loopback TCP,
// 1 MiB sequential protected writes, counted when acked durable: written and rbd_aio_flush'd)
// into a hub with --vol LG=rbd:…, then fio --ioengine=rbd (1 MiB sequential writes, iodepth --fio-depth,
// flush at the end) on a fresh image of the same size. Medians. Also the hub's CPU time (user +
// sys, /proc) per MiB ingested into RBD. Not a test: numbers only. With --base DIR (the dist/ of
// another build), each rep also runs that build's hub, so that a change is measured against its
// base in the same sitting, each against fio. HUB_ARGS (e.g. --no-journal) goes to every hub.
//   node dist/tools/bench/rbd-ingest.js [--reps 3] [--seconds 5] [--size-mib 256] [--base DIR] [--fio-depth 32]
import { execFileSync, spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { startCeph } from '../../test/harness/ceph';

const arg = (k: string, d: string) => {
  const i = process.argv.indexOf(`--${k}`);
  return i > 0 ? process.argv[i + 1] : d;
};
const REPS = Number(arg('reps', '3'));
const SECONDS = Number(arg('seconds', '5'));
const SIZE_MIB = Number(arg('size-mib', '256'));
const BASE = arg('base', '');
// fio's queue depth: 32 matches the hub's write window per image (storage/write-window.ts), like for like
const FIO_DEPTH = Number(arg('fio-depth', '32'));

/** CPU seconds (user + sys) of the first child of `pid` (loadgen's hub), or NaN. */
function childCpu(pid: number): number {
  try {
    const child = fs.readFileSync(`/proc/${pid}/task/${pid}/children`, 'utf8').trim().split(/\s+/)[0];
    const f = fs.readFileSync(`/proc/${child}/stat`, 'utf8').split(') ')[1].split(' ');
    return (Number(f[11]) + Number(f[12])) / 100; // utime, stime in clock ticks (USER_HZ 100)
  } catch {
    return NaN;
  }
}

/** loadgen's 1 MiB run into `recovery`: MB/s, and the hub's CPU ms per MiB during it. */
function loadgen(
  dist: string,
  recovery: string,
  env: NodeJS.ProcessEnv,
): Promise<{ mbps: number; cpuMsPerMiB: number }> {
  // --zeroes: the sync's answers say "all zero", as an agent's for a fresh volume; fio writes a fresh image too
  const args = ['--workload', '1m', '--seconds', String(SECONDS), '--size-mib', String(SIZE_MIB), '--zeroes'];
  const p = spawn(process.execPath, [path.join(dist, 'tools/loadgen.js'), ...args, '--recovery', recovery], {
    env,
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  let out = '',
    cpu0 = NaN,
    cpu1 = NaN;
  p.stdout.on('data', (d) => {
    out += d;
    if (Number.isNaN(cpu0) && /initial sync/.test(out)) cpu0 = childCpu(p.pid!);
    if (Number.isNaN(cpu1) && /1 MiB[^\n]*\n/.test(out)) cpu1 = childCpu(p.pid!);
  });
  return new Promise((resolve) =>
    p.on('exit', () => {
      const m = /1 MiB[^\n]*?([\d.]+) MB\/s[^\n]*\((\d+) writes/.exec(out);
      const mbps = m ? Number(m[1]) : 0,
        n = m ? Number(m[2]) : 0;
      resolve({ mbps, cpuMsPerMiB: n ? ((cpu1 - cpu0) * 1000) / n : NaN });
    }),
  );
}

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor((xs.length - 1) / 2)];

async function main(): Promise<void> {
  const ceph = await startCeph();
  const env = { ...process.env, CEPH_CONF: ceph.conf };
  const hub: number[] = [],
    fio: number[] = [],
    cpu: number[] = [],
    base: number[] = [];
  try {
    for (let r = 1; r <= REPS; r++) {
      if (BASE) {
        const b = await loadgen(BASE, `rbd:${ceph.pool}/base-${r}:conf=${ceph.conf}`, env);
        base.push(b.mbps);
        console.log(`rep ${r}: base build ${b.mbps} MB/s (hub CPU ${b.cpuMsPerMiB.toFixed(2)} ms per MiB)`);
        ceph.run('rbd', 'rm', '--no-progress', `${ceph.pool}/base-${r}`);
      }
      const lg = await loadgen(path.join(__dirname, '../..'), `rbd:${ceph.pool}/lg-${r}:conf=${ceph.conf}`, env);
      hub.push(lg.mbps);
      cpu.push(lg.cpuMsPerMiB);
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
          `--iodepth=${FIO_DEPTH}`,
          `--size=${SIZE_MIB}m`,
          '--time_based',
          `--runtime=${SECONDS}`,
          '--end_fsync=1',
          '--output-format=json',
        ],
        { encoding: 'utf8', env, timeout: 300_000 },
      );
      fio.push(Math.floor(JSON.parse(json).jobs[0].write.bw_bytes / 1e6));
      console.log(
        `rep ${r}: hub 1 MiB ingest into RBD ${hub[r - 1]} MB/s (hub CPU ${cpu[r - 1].toFixed(2)} ms per MiB), fio rbd engine ${fio[r - 1]} MB/s`,
      );
      ceph.run('rbd', 'rm', '--no-progress', `${ceph.pool}/lg-${r}`);
      ceph.run('rbd', 'rm', '--no-progress', `${ceph.pool}/fio-${r}`);
    }
  } finally {
    ceph.stop();
  }
  const h = median(hub),
    f = median(fio);
  console.log(
    `MEDIAN hub ${h} MB/s, fio rbd ${f} MB/s: hub / fio = ${(h / f).toFixed(2)}; hub CPU ${median(cpu).toFixed(2)} ms per MiB`,
  );
  if (BASE) console.log(`MEDIAN base build ${median(base)} MB/s: base / fio = ${(median(base) / f).toFixed(2)}`);
}

void main().catch((e) => {
  console.error(e);
  process.exit(1);
});
