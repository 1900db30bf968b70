// fio through an NBD export as a background writer for end-to-end tests. fio's nbd engine spins
// at 100 % CPU once its server goes away, so every writer started here is remembered, and a
// test's afterEach calls killWriters(): one that fails mid-write leaves none behind.
import { spawn, ChildProcess } from 'node:child_process';

const writers = new Set<ChildProcess>();

/** Random writes into `uri` for `seconds` at 4 MiB/s; resolves with fio's exit code. */
export function fioWriter(uri: string, seconds: number, extra: string[]): Promise<number | null> {
  const p = spawn(
    'fio',
    [
      '--name=w',
      '--ioengine=nbd',
      `--uri=${uri}`,
      '--rw=randwrite',
      '--iodepth=4',
      '--time_based',
      `--runtime=${seconds}`,
      '--rate=4m',
      ...extra,
    ],
    { stdio: 'ignore' },
  );
  writers.add(p);
  return new Promise((r) =>
    p.on('exit', (code) => {
      writers.delete(p);
      r(code);
    }),
  );
}

export function killWriters(): void {
  for (const w of writers) w.kill('SIGKILL');
}
