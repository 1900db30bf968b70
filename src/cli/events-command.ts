// `rephub events --hub URL [--json]`: the hub's event stream (GET /events) as lines, like
// `drbdsetup events2`: first what exists now, then each change as it happens. Text lines read
// `change volume vm=vm1 name=V1 state:syncing->protecting`; --json prints the hub's JSON lines.
import type { Command } from 'commander';
import * as http from 'node:http';

const MAX_LINE_BYTES = 1 << 20; // a line longer than this is not the hub's

type Event = Record<string, unknown> & { action: string; object: string };

const quote = (v: unknown): string => {
  const s = String(v);
  return /^[^\s"=]+$/.test(s) ? s : JSON.stringify(s);
};

/** One event as drbdsetup would print it. */
export function eventText(e: Event): string {
  const parts = [e.action, e.object];
  for (const [k, v] of Object.entries(e)) {
    if (k === 'seq' || k === 'time' || k === 'action' || k === 'object' || k === 'from' || k === 'to') continue;
    if (v === null || v === '') continue;
    parts.push(k === 'state' ? `state:${quote(v)}` : `${k}=${quote(v)}`);
  }
  if (e.from !== undefined) parts.push(`state:${e.from}->${e.to}`);
  return parts.join(' ');
}

function follow(url: string, json: boolean): Promise<never> {
  return new Promise((_, reject) => {
    const req = http.get(url, (res) => {
      if (res.statusCode !== 200) return reject(new Error(`${url}: HTTP ${res.statusCode}`));
      let buf = '';
      res.setEncoding('utf8');
      res.on('data', (chunk: string) => {
        buf += chunk;
        let nl: number;
        while ((nl = buf.indexOf('\n')) >= 0) {
          const line = buf.slice(0, nl);
          buf = buf.slice(nl + 1);
          if (line) process.stdout.write((json ? line : eventText(JSON.parse(line) as Event)) + '\n');
        }
        if (buf.length > MAX_LINE_BYTES) req.destroy(new Error(`${url}: a line over ${MAX_LINE_BYTES} bytes`));
      });
      res.on('end', () => reject(new Error(`${url}: the hub ended the stream`)));
      res.on('error', reject);
    });
    req.on('error', (e) => reject(new Error(`cannot reach ${url}: ${e.message}`)));
  });
}

export function addEventsCommand(program: Command): void {
  program
    .command('events')
    .description(
      'stream what changes on the hub (volume states, agents, checkpoints, alarms, verify, failover), one line each',
    )
    .option('--hub <url>', 'hub status URL', 'http://127.0.0.1:7080')
    .option('--json', 'print the JSON lines for scripts')
    .action((o: { hub: string; json?: boolean }) =>
      follow(o.hub.replace(/\/$/, '') + '/events', !!o.json).catch((e: Error) => {
        process.stderr.write(`rephub events: ${e.message}\n`);
        process.exit(1);
      }),
    );
}
