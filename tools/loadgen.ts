#!/usr/bin/env node
// Hub ingest benchmark: acts as an agent over loopback TCP, lets the hub finish its initial
// sync (answering remote reads with zeroes), then streams protected writes (4 KiB random and
// 1 MiB sequential) with a bounded window of bytes the hub has not applied (WRITE_APPLIED, as
// the agent's backlog bound counts them; --window-on acked: not acked durable), and reports
// durable MB/s and writes/s (the run ends when the hub's WRITE_ACK covers every write). With --rate-mbps, it instead
// paces writes of --bs bytes at that steady rate and reports the RPO lag of each write (from
// sending it to the ack that covers it): p50, p99, max. Not a test: numbers only.
//   node dist/tools/loadgen.js [--hub HOST:PORT] [--seconds 5] [--size-mib 1024] [--window-mib 64]
//                              [--workload 4k|1m|both] [--rate-mbps MB/s --bs BYTES] [--window-on applied|acked]
//                              [--recovery PATH]  (the recovery volume, e.g. rbd:POOL/IMAGE:conf=F; default a file)
//                              [--zeroes]  (answer the initial sync "all zero" instead of with zero bytes)
//                              [--name LG]  (the volume, and the VM loadgen-NAME: several loadgens on one --hub)
import * as net from 'node:net';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { HEAP_FLAGS } from '../src/cli/heap-flags';
import {
  Cmd,
  ALL_CAPS,
  Cap,
  PROTOCOL_VERSION,
  Limits,
  SECTOR,
  IO_OK,
  IO_ZEROES,
  DIRTY_FINAL,
  FrameDecoder,
  decode,
  encodeHello,
  encodeReportVmVolumes,
  encodeProtectedWriteHead,
  encodeRemoteIoResHead,
  encodeDirtyReport,
  encodePong,
} from '../protocol';

const arg = (k: string, d: string) => {
  const i = process.argv.indexOf(`--${k}`);
  return i > 0 ? process.argv[i + 1] : d;
};
const SECONDS = Number(arg('seconds', '5'));
const SIZE = Number(arg('size-mib', '1024')) << 20;
const WINDOW = Number(arg('window-mib', '64')) << 20;
const RATE = Number(arg('rate-mbps', '0')) * 1e6; // bytes/s; 0 = as fast as the window allows
const BS = Number(arg('bs', String(1 << 20)));
const WORKLOAD = arg('workload', 'both'); // 4k | 1m | both
// What the window counts: writes not applied (the agent's bound, agent/lag-bound.ts) or not durable.
const WINDOW_ON = arg('window-on', 'applied');
if (WINDOW_ON !== 'applied' && WINDOW_ON !== 'acked') throw new Error(`--window-on applied|acked, not ${WINDOW_ON}`);
const RECOVERY = arg('recovery', ''); // '' = a file in the hub's temp dir
const NAME = arg('name', 'LG'); // the volume; the VM is loadgen-NAME (a hub binds each VM to one session)
// Answer the sync's reads in the ZEROES form, as an agent does for a range it knows is empty (a
// fresh sparse volume): the hub then writes nothing where it knows its replica is zero.
const ZEROES_FORM = process.argv.includes('--zeroes');

async function startHub(): Promise<{ port: number; http: number; stop: () => void; dir: string }> {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'rephub-loadgen-'));
  // PORT: fixed ports (PORT, +1 HTTP, +2 NBD); REPHUB_CLI: another build's hub, for A/B runs
  const port = Number(process.env.PORT) || 17000 + Math.floor(Math.random() * 1000);
  const step = process.env.PORT ? 1 : 1000;
  const cli = process.env.REPHUB_CLI || path.join(__dirname, '../src/cli/rephub.js');
  const p = spawn(
    process.execPath,
    [
      ...HEAP_FLAGS, // as the installed bin runs (src/cli/heap-flags.ts)
      cli,
      '--listen',
      `127.0.0.1:${port}`,
      '--http',
      `127.0.0.1:${port + step}`,
      '--nbd', // not the default port: another hub on this host may hold it
      `127.0.0.1:${port + 2 * step}`,
      '--vol',
      `${NAME}=${RECOVERY || path.join(dir, `${NAME}R`)}`,
      '--data',
      path.join(dir, 'state'),
      ...(process.env.HUB_ARGS ?? '').split(' ').filter(Boolean), // e.g. HUB_ARGS=--no-journal
    ],
    { stdio: ['ignore', 'ignore', 'inherit'], env: { ...process.env, LOG_LEVEL: 'warn' } },
  );
  for (let i = 0; i < 100; i++) {
    const ok = await new Promise<boolean>((r) => {
      const s = net.connect(port, '127.0.0.1', () => {
        s.destroy();
        r(true);
      });
      s.on('error', () => r(false));
    });
    if (ok) break;
    await new Promise((r) => setTimeout(r, 100));
  }
  return {
    port,
    http: port + step, // where --http listens: with PORT set, the next port
    dir,
    stop: () => {
      p.kill('SIGTERM');
    },
  };
}

/** The hub's HTTP status says volume NAME is protecting with nothing dirty. */
async function protecting(port: number): Promise<boolean> {
  try {
    const st = (await (await fetch(`http://127.0.0.1:${port}/status`)).json()) as {
      volumes: { name: string; state: string; dirtyBytes: number }[];
    };
    return st.volumes.some((v) => v.name === NAME && v.state === 'protecting' && v.dirtyBytes === 0);
  } catch {
    return false;
  }
}

async function main() {
  const given = arg('hub', '');
  const hub = given
    ? { host: given.split(':')[0], port: Number(given.split(':')[1]), http: 0, stop: () => {}, dir: '' }
    : { host: '127.0.0.1', ...(await startHub()) };
  const sock = net.connect(hub.port, hub.host);
  sock.setNoDelay(true);
  let volId = -1,
    acked = 0,
    applied = 0, // WRITE_APPLIED's seq, or the ack's when later
    lastRead = Date.now();
  const zero = Buffer.alloc(Limits.maxIoBytes);
  let onAck: (() => void) | null = null;
  const framer = new FrameDecoder((cmd, payload) => {
    const m = decode(cmd, payload);
    if (m.cmd === Cmd.START_PROTECT) {
      volId = m.volumeId;
      sock.write(encodeDirtyReport(volId, 1, DIRTY_FINAL, [])); // nothing dirty on our side
    } else if (m.cmd === Cmd.REMOTE_IO_REQ) {
      lastRead = Date.now();
      if (ZEROES_FORM) sock.write(encodeRemoteIoResHead(m.reqId, IO_ZEROES, m.volumeId, 0));
      else {
        sock.write(encodeRemoteIoResHead(m.reqId, IO_OK, m.volumeId, m.sizeSectors * SECTOR));
        sock.write(zero.subarray(0, m.sizeSectors * SECTOR));
      }
    } else if (m.cmd === Cmd.WRITE_ACK) {
      acked = m.seq;
      applied = Math.max(applied, m.seq);
      onAck?.();
    } else if (m.cmd === Cmd.WRITE_APPLIED) {
      applied = Math.max(applied, m.seq);
      if (WINDOW_ON === 'applied') onAck?.();
    } else if (m.cmd === Cmd.PING) sock.write(encodePong(m.nonce)); // the hub drops a peer silent for 3 beats
  });
  sock.on('data', (c) => framer.push(c));
  await new Promise<void>((r) => sock.once('connect', () => r()));
  sock.write(
    encodeHello(PROTOCOL_VERSION, ALL_CAPS & ~Cap.FRAME_CRC & ~Cap.IDENTITY, Limits.maxPayload, `loadgen-${NAME}`),
  );
  sock.write(encodeReportVmVolumes([{ name: NAME, sizeBytes: SIZE }]));
  const syncStart = Date.now();
  while (volId < 0 || Date.now() - lastRead < 300) await new Promise((r) => setTimeout(r, 50));
  // The sync's writes may still be landing after the last read (an RBD image is slower than our
  // answers): the hub says when the volume is protecting, so that the runs measure ingest alone.
  if (hub.http) while (!(await protecting(hub.http))) await new Promise((r) => setTimeout(r, 50));
  console.log(
    `initial sync of ${SIZE >> 20} MiB (all zero, answered from memory): ${((Date.now() - syncStart - 300) / 1000).toFixed(2)} s`,
  );

  let seq = 0;
  async function run(name: string, bs: number, random: boolean) {
    const data = randomBytes(bs);
    const sizes: number[] = [];
    let off = 0,
      sent = 0;
    const t0 = process.hrtime.bigint();
    const end = Date.now() + SECONDS * 1000;
    const base = seq;
    while (Date.now() < end) {
      while ((seq - (WINDOW_ON === 'applied' ? applied : acked)) * bs >= WINDOW)
        await new Promise<void>((r) => (onAck = r));
      const o = random ? Math.floor(Math.random() * (SIZE / bs)) * bs : off;
      off = (off + bs) % SIZE;
      sock.cork();
      sock.write(encodeProtectedWriteHead(volId, o / SECTOR, bs / SECTOR, IO_OK));
      const ok = sock.write(data);
      sock.uncork();
      seq++;
      sent += bs;
      if (!ok) await new Promise((r) => sock.once('drain', r));
      sizes.push(0);
      if (sizes.length > 1000) sizes.length = 0;
    }
    while (acked < seq) await new Promise<void>((r) => (onAck = r));
    const s = Number(process.hrtime.bigint() - t0) / 1e9;
    const n = seq - base;
    console.log(
      `${name.padEnd(22)} ${(sent / s / 1e6).toFixed(1).padStart(8)} MB/s ${(n / s).toFixed(0).padStart(9)} writes/s  (${n} writes in ${s.toFixed(2)} s, all acked durable)`,
    );
  }
  /** Steady RATE bytes/s in BS writes for SECONDS; the lag of each write from send to ack. */
  async function rpo() {
    const data = randomBytes(BS);
    const sentAt = new Float64Array(Math.ceil((RATE * SECONDS) / BS) + 16); // bounded: one slot per write of the run
    const base = seq;
    let off = 0,
      n = 0;
    const lags: number[] = [];
    let ackedTo = base;
    onAck = null;
    const collect = () => {
      const now = performance.now();
      for (; ackedTo < acked && ackedTo - base < n; ackedTo++) lags.push(now - sentAt[ackedTo - base]);
    };
    const t0 = performance.now();
    while (n < sentAt.length - 16 && performance.now() - t0 < SECONDS * 1000) {
      const due = Math.floor((((performance.now() - t0) / 1000) * RATE) / BS) + 1; // writes due by now
      while (n < due && n < sentAt.length - 16) {
        if ((seq - acked) * BS >= WINDOW) break; // the window is full: the lag shows it
        sock.cork();
        sock.write(encodeProtectedWriteHead(volId, off / SECTOR, BS / SECTOR, IO_OK));
        sock.write(data);
        sock.uncork();
        sentAt[n] = t0 + (n * BS * 1000) / RATE; // when it was due: a write held back by a full window counts its wait
        n++;
        seq++;
        off = (off + BS) % SIZE;
      }
      collect();
      await new Promise((r) => setTimeout(r, 1));
    }
    while (acked < seq) {
      await new Promise<void>((r) => (onAck = r));
      collect();
    }
    collect();
    const late = Math.max(0, Math.floor((((performance.now() - t0) / 1000) * RATE) / BS) - n);
    lags.sort((a, b) => a - b);
    const q = (p: number) => lags[Math.min(lags.length - 1, Math.floor(p * lags.length))].toFixed(1);
    console.log(
      `RPO at ${(RATE / 1e6).toFixed(0)} MB/s in ${BS}-byte writes: ${n} writes, p50 ${q(0.5)} ms, p99 ${q(0.99)} ms, max ${q(1 - 1e-9)} ms${late ? `, fell ${late} writes behind the rate` : ''}`,
    );
  }

  if (RATE > 0) await rpo();
  else {
    if (WORKLOAD !== '1m') await run('4 KiB random writes', 4096, true);
    if (WORKLOAD !== '4k') await run('1 MiB sequential', 1 << 20, false);
  }
  sock.destroy();
  hub.stop();
  if (hub.dir) setTimeout(() => fs.rmSync(hub.dir, { recursive: true, force: true }), 500);
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
