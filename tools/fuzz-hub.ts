#!/usr/bin/env node
// Fuzzing campaign against a live hub (see tools/fuzz-campaign.ts for what it sends and checks).
//   node dist/tools/fuzz-hub.js [--frames 1000000] [--conns 8] [--seed N]
//                               [--hub HOST:PORT --http HOST:PORT [--pid PID]]
//                               [--max-rss-mib 0] [--image-mib 64] [--keep]
// Without --hub it spawns `node dist/src/cli/rephub.js` with V1 and FZ1..FZ4 recovery volumes in a
// temporary directory. With --hub, the hub must have a recovery volume V1 that no agent holds
// (and, optionally, FZ<n> volumes for owner sessions); --http is its status address, --pid lets
// the tool sample its RSS. Exit status 0 only if every check passed; the last line is the tally.
import { runCampaign, tally, details } from '../test/harness/fuzz/campaign';

function arg(k: string): string | undefined {
  const i = process.argv.indexOf(`--${k}`);
  return i > 0 ? process.argv[i + 1] : undefined;
}
function num(k: string, d: number): number {
  const v = arg(k);
  if (v === undefined) return d;
  const n = Number(v);
  if (!Number.isFinite(n) || n < 0) throw new Error(`--${k}: expected a non-negative number, got "${v}"`);
  return n;
}
function hostPort(v: string, opt: string): { host: string; port: number } {
  const m = /^(.+):(\d{1,5})$/.exec(v);
  if (!m) throw new Error(`${opt}: expected HOST:PORT, got "${v}"`);
  return { host: m[1].replace(/^\[|\]$/g, ''), port: Number(m[2]) };
}

async function main(): Promise<number> {
  if (process.argv.includes('--help') || process.argv.includes('-h')) {
    process.stdout.write(
      'usage: node dist/tools/fuzz-hub.js [--frames 1000000] [--conns 8] [--seed N] [--hub HOST:PORT --http HOST:PORT [--pid PID]] [--max-rss-mib N] [--image-mib 64] [--keep]\n',
    );
    return 0;
  }
  const seed = num('seed', Date.now() % 1_000_000);
  const given = arg('hub');
  let hub: { host: string; port: number; http: string; pid?: number } | undefined;
  if (given) {
    const http = arg('http');
    if (!http) throw new Error('--hub needs --http HOST:PORT (the hub status endpoint)');
    hostPort(http, '--http');
    hub = { ...hostPort(given, '--hub'), http, pid: arg('pid') ? num('pid', 0) : undefined };
  }
  const r = await runCampaign({
    frames: num('frames', 1_000_000),
    conns: Math.max(1, num('conns', 8)),
    seed,
    hub,
    imageMiB: num('image-mib', 64),
    maxRssMiB: num('max-rss-mib', 0),
    keep: process.argv.includes('--keep'),
    log: (l) => process.stderr.write(`${l}\n`),
  });
  for (const l of details(r)) process.stdout.write(`${l}\n`);
  if (r.failures.length) {
    process.stdout.write(
      `FAILED checks (${r.failures.length}${r.failures.length >= 40 ? '+' : ''}), state kept in ${r.dir}:\n`,
    );
    for (const f of r.failures) process.stdout.write(`  - ${f}\n`);
  }
  process.stdout.write(`seed=${seed}\n${tally(r)}\n`);
  return r.failures.length === 0 && r.crashes === 0 && r.hangs === 0 && r.good.converged ? 0 : 1;
}

main().then(
  (code) => process.exit(code),
  (e) => {
    process.stderr.write(`fuzz-hub: ${(e as Error).stack ?? e}\n`);
    process.exit(2);
  },
);
