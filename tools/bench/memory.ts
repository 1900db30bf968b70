#!/usr/bin/env node
// Hub memory with many huge volumes: spawns the hub with 64 recovery volumes of 1 TiB (sparse
// files), connects a fake agent that reports them and answers the initial sync's remote reads
// with IO_ZEROES, and samples the hub's RSS while the 64 syncs run. Not a test.
//   node dist/tools/bench/memory.js [--volumes 64] [--tib 1] [--seconds 20]
import * as net from 'node:net';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { spawn } from 'node:child_process';
import {
  Cmd,
  ALL_CAPS,
  Cap,
  PROTOCOL_VERSION,
  Limits,
  IO_ZEROES,
  DIRTY_FINAL,
  FrameDecoder,
  decode,
  encodeHello,
  encodeReportVmVolumes,
  encodeRemoteIoResHead,
  encodeDirtyReport,
} from '../../protocol';
import { DirtyBitmap } from '../../storage/bitmap';
import { HEAP_FLAGS } from '../../src/cli/heap-flags';

const arg = (k: string, d: string) => {
  const i = process.argv.indexOf(`--${k}`);
  return i > 0 ? process.argv[i + 1] : d;
};
const N = Number(arg('volumes', '64')),
  TIB = Number(arg('tib', '1')),
  SECONDS = Number(arg('seconds', '20'));
const SIZE = TIB * 2 ** 40;

function rssMiB(pid: number): number {
  const m = /VmRSS:\s+(\d+)/.exec(fs.readFileSync(`/proc/${pid}/status`, 'utf8'));
  return m ? Number(m[1]) / 1024 : NaN;
}

/** A connection to the hub's agent port, retried for up to 30 s while it starts. */
async function listening(port: number): Promise<net.Socket> {
  for (let i = 0; ; i++) {
    const s = await new Promise<net.Socket | null>((r) => {
      const c = net.connect(port, '127.0.0.1', () => r(c));
      c.once('error', () => r(null));
    });
    if (s) return s;
    if (i >= 300) throw new Error(`no hub listening on ${port} after 30 s`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

async function main() {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'rephub-mem-'));
  const port = Number(process.env.PORT) || 17300 + Math.floor(Math.random() * 500);
  const vols = Array.from({ length: N }, (_, i) => `M${i}`);
  const hub = spawn(
    process.execPath,
    [
      ...HEAP_FLAGS, // as the installed bin runs: the RSS it reports is theirs
      path.join(__dirname, '../../src/cli/rephub.js'),
      '--listen',
      `127.0.0.1:${port}`,
      '--http',
      `127.0.0.1:${port + 1}`,
      '--nbd',
      `127.0.0.1:${port + 2}`,
      '--data',
      path.join(dir, 'state'),
      ...vols.flatMap((v) => ['--vol', `${v}=${path.join(dir, v + 'R')}`]),
    ],
    { stdio: ['ignore', 'ignore', 'inherit'], env: { ...process.env, LOG_LEVEL: 'warn' } },
  );
  const sock = await listening(port).catch((e) => {
    hub.kill('SIGTERM'); // never leave it behind
    throw e;
  }); // a loaded machine may take seconds to start it
  const base = rssMiB(hub.pid!);
  sock.setNoDelay(true);
  let reads = 0;
  const framer = new FrameDecoder((cmd, p) => {
    const m = decode(cmd, p);
    if (m.cmd === Cmd.START_PROTECT) sock.write(encodeDirtyReport(m.volumeId, 1, DIRTY_FINAL, []));
    else if (m.cmd === Cmd.REMOTE_IO_REQ) {
      reads++;
      sock.write(encodeRemoteIoResHead(m.reqId, IO_ZEROES, m.volumeId, 0));
    }
  });
  sock.on('data', (c) => framer.push(c));
  sock.write(encodeHello(PROTOCOL_VERSION, ALL_CAPS & ~Cap.FRAME_CRC & ~Cap.IDENTITY, Limits.maxPayload, 'memvm'));
  sock.write(encodeReportVmVolumes(vols.map((name) => ({ name, sizeBytes: SIZE }))));
  let max = 0;
  for (let t = 0; t < SECONDS; t++) {
    await new Promise((r) => setTimeout(r, 1000));
    max = Math.max(max, rssMiB(hub.pid!));
  }
  const st: any = await (await fetch(`http://127.0.0.1:${port + 1}/status`)).json();
  const synced = st.volumes.reduce((s: number, v: any) => s + (v.sizeBytes - v.dirtyBytes), 0);
  // the bitmap's own cost per TiB: all dirty (collapsed pages) and half dirty (materialized)
  const full = new DirtyBitmap(2 ** 40, 65536);
  full.setAll();
  const half = new DirtyBitmap(2 ** 40, 65536);
  for (let r = 0; r < half.regions; r += 2) half.setRegions(r, r);
  console.log(
    `hub with ${N} x ${TIB} TiB volumes: RSS at start ${base.toFixed(0)} MiB, max over ${SECONDS} s of syncing ${max.toFixed(0)} MiB; ${reads} remote reads answered, ${(synced / 2 ** 30).toFixed(1)} GiB synced`,
  );
  console.log(
    `bitmap memory per TiB at 64 KiB regions: ${(full.memoryBytes / 1024).toFixed(1)} KiB all dirty or clean, ${(half.memoryBytes / 2 ** 20).toFixed(2)} MiB when every page is partly dirty`,
  );
  sock.destroy();
  hub.kill('SIGTERM');
  setTimeout(() => fs.rmSync(dir, { recursive: true, force: true }), 1000);
}
main().catch((e) => {
  console.error(e);
  process.exit(1);
});
