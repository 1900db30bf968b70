#!/usr/bin/env node
// The fault proxy's command line (the proxy itself: test/harness/fault-proxy.ts, its modes and
// script syntax: test/harness/fault-script.ts).
//
//   node dist/tools/faultproxy.js --listen 127.0.0.1:7001 --target 127.0.0.1:7000 \
//     --script "pass 2s, delay 200ms 2s, stall 5s, reset, drop 1s, halfopen 10s, pass" [--loop]
//   (lines on stdin are steps too, run at once: "stall", "pass", "delay 50ms", "reset" ...)
import { FaultProxy } from '../test/harness/fault-proxy';
import { parseEndpoint, parseScript } from '../test/harness/fault-script';

function main(argv: string[]): void {
  const opt = (k: string) => {
    const i = argv.indexOf(`--${k}`);
    return i >= 0 ? argv[i + 1] : undefined;
  };
  if (argv.includes('--help') || argv.includes('-h')) {
    process.stdout.write(
      'usage: faultproxy --listen 127.0.0.1:PORT --target 127.0.0.1:PORT [--script "pass 2s, delay 200ms 2s, stall 5s, reset, drop 1s, halfopen 10s, pass"] [--loop] [--max-buffer BYTES] [--rate BYTES_PER_SEC] [--seed N]\n' +
        'modes: pass | delay N | stall | drop [bytes|chunks] | reset | halfopen; stdin lines are steps run at once\n',
    );
    return;
  }
  const listen = parseEndpoint(opt('listen') ?? '127.0.0.1:0', '--listen');
  const targetArg = opt('target');
  if (!targetArg) throw new Error('--target 127.0.0.1:PORT is required');
  const target = parseEndpoint(targetArg, '--target');
  const script = opt('script');
  const steps = script ? parseScript(script) : undefined; // parse errors before listening
  const p = new FaultProxy({
    listen,
    target,
    maxBufferBytes: opt('max-buffer') ? Number(opt('max-buffer')) : undefined,
    seed: opt('seed') ? Number(opt('seed')) : undefined,
    rateBytesPerSec: opt('rate') ? Number(opt('rate')) : undefined,
    log: (l) => process.stderr.write(`${new Date().toISOString()} ${l}\n`),
  });
  void p.listen().then((port) => {
    process.stderr.write(`faultproxy: 127.0.0.1:${port} -> ${target.host}:${target.port}\n`);
    if (steps) void p.runScript(steps, argv.includes('--loop'));
  });
  let buf = '';
  process.stdin.on('data', (d) => {
    buf += d;
    if (buf.length > 65536) buf = buf.slice(-65536);
    let i;
    while ((i = buf.indexOf('\n')) >= 0) {
      const line = buf.slice(0, i).trim();
      buf = buf.slice(i + 1);
      if (!line) continue;
      if (line === 'stats') {
        process.stderr.write(`${JSON.stringify(p.stats)}\n`);
        continue;
      }
      try {
        void p.runScript(parseScript(line));
      } catch (e) {
        process.stderr.write(`faultproxy: ${(e as Error).message}\n`);
      }
    }
  });
  process.stdin.on('end', () => undefined);
  const stop = () => {
    process.stderr.write(`faultproxy: stats ${JSON.stringify(p.stats)}\n`);
    void p.close().then(() => process.exit(0));
  };
  process.on('SIGINT', stop);
  process.on('SIGTERM', stop);
}

if (require.main === module) {
  try {
    main(process.argv.slice(2));
  } catch (e) {
    process.stderr.write(`faultproxy: ${(e as Error).message}\n`);
    process.exit(2);
  }
}
