#!/usr/bin/env node
// Loopback TCP baseline for the hub ingest target: one Node process streams 1 MiB buffers to a
// second one (a sink that discards) for --seconds, and prints the MB/s the sink received. Same
// runtime, socket options and buffer sizes as the agent -> hub link, so it is the link ceiling
// the hub can be held to.   node dist/tools/bench/tcp-loopback.js [--seconds 4]
import * as net from 'node:net';
import { spawn } from 'node:child_process';

const arg = (k: string, d: string) => {
  const i = process.argv.indexOf(`--${k}`);
  return i > 0 ? process.argv[i + 1] : d;
};

if (process.argv.includes('--sink')) {
  const srv = net.createServer((s) => {
    s.setNoDelay(true);
    let bytes = 0,
      t0 = 0;
    s.on('data', (c) => {
      if (!t0) t0 = performance.now();
      bytes += c.length;
    });
    s.on('end', () => {
      process.stdout.write(`${(((bytes / (performance.now() - t0)) * 1000) / 1e6).toFixed(0)}\n`);
      srv.close();
    });
  });
  srv.listen(0, '127.0.0.1', () => process.stdout.write(`${(srv.address() as net.AddressInfo).port}\n`));
} else {
  const seconds = Number(arg('seconds', '4'));
  const sink = spawn(process.execPath, [__filename, '--sink'], { stdio: ['ignore', 'pipe', 'inherit'] });
  let out = '';
  sink.stdout.on('data', (c) => {
    out += c;
    const lines = out.split('\n');
    if (lines.length === 2 && lines[1] === '') send(Number(lines[0]));
    if (lines.length === 3) console.log(`loopback TCP, Node to Node, 1 MiB writes: ${lines[1]} MB/s`);
  });
  function send(port: number) {
    const s = net.connect(port, '127.0.0.1');
    s.setNoDelay(true);
    const buf = Buffer.alloc(1 << 20, 0x5a);
    const end = performance.now() + seconds * 1000;
    const pump = () => {
      while (performance.now() < end) if (!s.write(buf)) return void s.once('drain', pump);
      s.end();
    };
    s.on('connect', pump);
  }
}
