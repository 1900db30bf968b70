#!/usr/bin/env node
// The agent link's TLS cost without the rest of rephub (issue 17): one Node process streams
// frames (a 24-byte header and a 1 MiB payload, written as the agent writes them: corked,
// uncorked in setImmediate) to a sink in a second process, over TCP or TLS (TLS 1.3, the same
// certificate options as src/security.ts), and prints MB/s and CPU microseconds per MiB of each
// side from process.cpuUsage().
//   node dist/tools/bench/tls-loopback.js [--seconds 3] [--tls] [--certs DIR] [--frame 1048576]
//     [--batch 1] (frames written per event-loop turn) [--ciphers LIST] (the client's TLS 1.3 order)
//     [--mib N] (send N MiB instead of --seconds: a fixed amount, for `perf stat -e instructions:u`)
// DIR: tools/make-certs.sh DIR 127.0.0.1 bench (made in a temp dir when absent).
import * as net from 'node:net';
import * as tls from 'node:tls';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { spawn, execFileSync } from 'node:child_process';
import { clientOptions, serverOptions } from '../../src/security';
import { writeBatchedThen } from '../../src/net-batch';

const arg = (k: string, d: string) => {
  const i = process.argv.indexOf(`--${k}`);
  return i > 0 ? process.argv[i + 1] : d;
};
const useTls = process.argv.includes('--tls');
const certs = () => {
  let dir = arg('certs', '');
  if (!dir) {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'tls-loopback-'));
    execFileSync('bash', [path.join(__dirname, '../../../tools/make-certs.sh'), dir, '127.0.0.1', 'bench']);
  }
  return dir;
};
const cpuUs = () => {
  const u = process.cpuUsage();
  return u.user + u.system;
};

if (process.argv.includes('--sink')) {
  const dir = arg('certs', '');
  const onSock = (s: net.Socket) => {
    s.setNoDelay(true);
    let bytes = 0,
      t0 = 0,
      c0 = 0,
      chunks = 0;
    s.on('data', (c: Buffer) => {
      if (!t0) {
        t0 = performance.now();
        c0 = cpuUs();
      }
      bytes += c.length;
      chunks++;
    });
    s.on('end', () => {
      const ms = performance.now() - t0,
        mib = bytes / 1048576;
      const info = s instanceof tls.TLSSocket ? ` ${s.getProtocol()} ${s.getCipher().name}` : '';
      process.stdout.write(
        `sink: ${((bytes / ms) * 1e3) / 1e6} MB/s, ${((cpuUs() - c0) / mib).toFixed(0)} us/MiB, ` +
          `${(bytes / chunks).toFixed(0)} B/chunk${info}\n`,
      );
      s.end();
      srv.close();
    });
  };
  const files = { cert: `${dir}/hub.pem`, key: `${dir}/hub.key`, ca: `${dir}/ca.pem` };
  const srv = useTls ? tls.createServer(serverOptions(files).options, onSock) : net.createServer(onSock);
  srv.listen(0, '127.0.0.1', () => process.stdout.write(`${(srv.address() as net.AddressInfo).port}\n`));
} else {
  const seconds = Number(arg('seconds', '3')),
    frame = Number(arg('frame', String(1 << 20)));
  const dir = useTls ? certs() : '';
  const ciphers = arg('ciphers', '') ? { ciphers: arg('ciphers', '') } : {};
  const batch = Number(arg('batch', '1'));
  const sink = spawn(process.execPath, [__filename, '--sink', '--certs', dir, ...(useTls ? ['--tls'] : [])], {
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  sink.stdout.once('data', (d: Buffer) => {
    const port = Number(String(d).trim());
    sink.stdout.on('data', (x: Buffer) => process.stdout.write(x));
    const files = { cert: `${dir}/bench.pem`, key: `${dir}/bench.key`, ca: `${dir}/ca.pem` };
    const s: net.Socket = useTls
      ? tls.connect({ host: '127.0.0.1', port, ...clientOptions(files, 'bench', '127.0.0.1'), ...ciphers })
      : net.connect({ host: '127.0.0.1', port });
    s.setNoDelay(true);
    const header = Buffer.alloc(24),
      payload = Buffer.alloc(frame, 0x5a);
    s.once(useTls ? 'secureConnect' : 'connect', () => {
      const end = performance.now() + seconds * 1000,
        limit = Number(arg('mib', '0')) * 1048576 || Infinity,
        c0 = cpuUs();
      let sent = 0;
      const pump = () => {
        while (performance.now() < end && sent < limit) {
          let ok = true;
          for (let i = 0; i < batch; i++) ok = writeBatchedThen(s, [header, payload]);
          sent += frame * batch;
          if (!ok) return void s.once('drain', pump);
        }
        const mib = sent / 1048576;
        process.stdout.write(`sender: ${((cpuUs() - c0) / mib).toFixed(0)} us/MiB\n`);
        s.end();
      };
      pump();
    });
  });
}
