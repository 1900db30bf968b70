// The journal's command line: the hub's --journal-* and --checkpoint-interval options, and the
// operator subcommands `rephub checkpoints`, `rephub checkpoint` and `rephub restore`, which talk
// to a running hub (GET /checkpoints, POST /checkpoint, POST /restore).
import type * as http from 'node:http';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { spawn, spawnSync } from 'node:child_process';
import { Command } from 'commander';
import type { JournalConfig } from '../hub/journal';
import { currentBootId } from '../../storage/journal-mark';
import { parseDuration, parseSize } from './args';
import { writeToNbd } from './nbd-writer';

type Post = (hub: string, action: string, body: object, raw?: boolean) => Promise<any>;

export interface JournalFlags {
  journal: boolean;
  journalDir?: string;
  journalRetention: string;
  journalSize: string;
  checkpointInterval: string;
}

export function journalServeOptions(cmd: Command): Command {
  return cmd
    .option('--no-journal', 'keep no journal: recovery only to the present (no checkpoints, no restore --at)')
    .option('--journal-dir <dir>', 'where the per-VM journals of before-images live (default: DATA/journal)')
    .option(
      '--journal-retention <duration>',
      'keep checkpoints this long, e.g. 1h, 1d (the newest is never dropped by age)',
      '1h',
    )
    .option(
      '--journal-size <bytes>',
      'journal bytes per VM; over it the oldest segments and their checkpoints go',
      '8G',
    )
    .option(
      '--checkpoint-interval <duration>',
      'a checkpoint at least this often while writes flow (also one per guest flush)',
      '5s',
    );
}

export function journalConfig(o: JournalFlags, data: string): JournalConfig | undefined {
  if (!o.journal) return undefined;
  const retentionMs = parseDuration(o.journalRetention, '--journal-retention');
  const intervalMs = parseDuration(o.checkpointInterval, '--checkpoint-interval');
  const maxBytes = parseSize(o.journalSize, '--journal-size');
  if (retentionMs <= 0 || intervalMs <= 0) throw new Error('--journal-retention and --checkpoint-interval must be > 0');
  if (maxBytes < 4 << 20) throw new Error('--journal-size must be at least 4M');
  // REPHUB_BOOT_ID_FILE stands in for the kernel's boot id: the power-loss tests fake a reboot with it.
  const bootFile = process.env.REPHUB_BOOT_ID_FILE;
  const bootId = bootFile ? currentBootId(bootFile) : undefined;
  return { dir: path.resolve(o.journalDir ?? path.join(data, 'journal')), retentionMs, maxBytes, intervalMs, bootId };
}

async function get(hub: string, what: string): Promise<any> {
  const url = hub.replace(/\/$/, '') + what;
  const res = await fetch(url).catch((e) => {
    throw new Error(`cannot reach ${url}: ${e.cause?.message ?? e.message}`);
  });
  const out: any = await res.json();
  if (!res.ok) throw new Error(out.error ?? `HTTP ${res.status}`);
  return out;
}

/**
 * Stream the restore answer into a file (written in place: a device or an image keeps its size).
 * The answer's small chunks are gathered into 4 MiB writes, one in flight while the next fills.
 */
async function writeToFile(body: AsyncIterable<Uint8Array>, file: string, size: number): Promise<number> {
  const fh = await fs.promises.open(file, fs.existsSync(file) ? 'r+' : 'w+');
  const GATHER = 4 << 20;
  let pos = 0,
    fill = 0,
    buf = Buffer.allocUnsafe(GATHER),
    spare = Buffer.allocUnsafe(GATHER),
    pending: Promise<unknown> = Promise.resolve();
  const drain = async () => {
    await pending;
    pending = fh.write(buf, 0, fill, pos);
    pos += fill;
    [buf, spare] = [spare, buf];
    fill = 0;
  };
  try {
    for await (const chunk of body) {
      for (let at = 0; at < chunk.length;) {
        const n = Math.min(chunk.length - at, GATHER - fill);
        buf.set(chunk.subarray(at, at + n), fill);
        fill += n;
        at += n;
        if (fill === GATHER) await drain();
      }
    }
    if (fill) await drain();
    await pending;
    const st = await fh.stat();
    if (st.isFile() && st.size < size) await fh.truncate(size);
    await fh.sync();
  } finally {
    await fh.close();
  }
  return pos;
}

export function addJournalCommands(program: Command, tokenOption: (c: Command) => Command, post: Post): void {
  program
    .command('checkpoints')
    .description("list the journal's consistent checkpoints (per VM: id, time, kind, label)")
    .option('--hub <url>', 'hub URL', 'http://127.0.0.1:7080')
    .option('--vm <name>', 'only this VM')
    .option('--json', 'print JSON for scripts')
    .action(async (o) => {
      const r: any[] = await get(o.hub, '/checkpoints' + (o.vm ? `?vm=${encodeURIComponent(o.vm)}` : ''));
      if (o.json) return void process.stdout.write(JSON.stringify(r, null, 2) + '\n');
      for (const j of r) {
        process.stdout.write(`VM ${j.vm}: ${j.checkpoints.length} checkpoints\n`);
        for (const c of j.checkpoints)
          process.stdout.write(`  ${c.id}\t${c.time}\t${c.kind}${c.label ? '\t' + c.label : ''}\n`);
      }
    });
  tokenOption(program.command('checkpoint'))
    .description('tag the next consistent point of a VM (for example before an upgrade)')
    .option('--hub <url>', 'hub operator URL', 'http://127.0.0.1:7080')
    .requiredOption('--vm <name>', 'the VM')
    .requiredOption('--label <text>', 'the tag')
    .action(async (o) => {
      const r = await post(o.hub, '/checkpoint', { vm: o.vm, label: o.label });
      if (r.pending)
        process.stdout.write(`tag "${o.label}" pending: it goes on the next consistent point of ${o.vm}\n`);
      else process.stdout.write(`${r.checkpoint.id}\t${new Date(r.checkpoint.time).toISOString()}\ttag\t${o.label}\n`);
    });
  tokenOption(program.command('restore'))
    .description('write a volume as of a checkpoint to a file or an NBD export')
    .option('--hub <url>', 'hub operator URL', 'http://127.0.0.1:7080')
    .requiredOption('--vm <name>', 'the VM')
    .requiredOption('--volume <name>', 'the volume (e.g. V1)')
    .option('--at <point>', 'checkpoint id, ISO 8601 time, "10 min ago", or latest', 'latest')
    .requiredOption('--to <target>', 'a file or nbd://host:port/export')
    .option(
      '--via <how>',
      'nbdcopy (the hub serves the point over NBD, nbdcopy copies it), http (a stream from the hub), ' +
        'or auto: nbdcopy when installed and the hub NBD is plaintext',
      'auto',
    )
    .action(async (o) => {
      if (!['auto', 'nbdcopy', 'http'].includes(o.via))
        throw new Error(`--via ${o.via}: expected auto, nbdcopy or http`);
      const req = { vm: o.vm, volume: o.volume, at: o.at };
      let done: { size: number; cp: any } | null = null;
      if (o.via === 'nbdcopy' || (o.via === 'auto' && hasNbdcopy())) {
        try {
          done = await restoreViaNbd(o.hub, req, o.to, post);
        } catch (e) {
          if (o.via !== 'auto' || !(e instanceof NoNbdExport)) throw e;
        }
      }
      done ??= await restoreViaHttp(o.hub, req, o.to, post);
      const { size, cp } = done;
      process.stdout.write(
        `${o.volume}\tcheckpoint ${cp.id} (${cp.time}, ${cp.kind}${cp.label ? ', ' + cp.label : ''})\t${size} bytes to ${o.to}\n`,
      );
    });
}

/** The hub cannot serve the restore over NBD (TLS-only NBD, or an older hub): HTTP instead. */
class NoNbdExport extends Error {}

let nbdcopyFound: boolean | undefined;
function hasNbdcopy(): boolean {
  return (nbdcopyFound ??= spawnSync('nbdcopy', ['--version'], { stdio: 'ignore' }).status === 0);
}

interface RestoreReq {
  vm: string;
  volume: string;
  at: string;
}

/**
 * The hub serves the point under an export of its own (src/hub/restore-export.ts) and nbdcopy
 * copies it (several connections, many requests in flight; --flush: durable, as the HTTP path's
 * fsync). A file is written as nbdcopy writes one: it ends at the volume's size.
 */
async function restoreViaNbd(hub: string, req: RestoreReq, to: string, post: Post): Promise<{ size: number; cp: any }> {
  let ex: { name: string; uri: string; size: number; checkpoint: any };
  try {
    ex = await post(hub, '/restore-export', req);
  } catch (e) {
    const m = (e as Error).message;
    if (/TLS only|not found|HTTP 404/i.test(m)) throw new NoNbdExport(m);
    throw e;
  }
  try {
    const src = new URL(ex.uri);
    if (src.hostname === '0.0.0.0' || src.hostname === '[::]') src.hostname = new URL(hub).hostname;
    const code = await new Promise<number | null>((resolve, reject) =>
      spawn('nbdcopy', ['--flush', src.toString(), to], { stdio: ['ignore', 'inherit', 'inherit'] })
        .on('error', reject)
        .on('exit', resolve),
    );
    if (code !== 0) throw new Error(`restore of ${req.volume}: nbdcopy ${src} ${to} failed (exit ${code})`);
  } finally {
    await post(hub, '/restore-export/end', { name: ex.name }).catch(() => undefined); // else it ends by itself
  }
  return { size: ex.size, cp: ex.checkpoint };
}

/** The hub streams the volume as of the point over HTTP; written in place to a file or over NBD. */
async function restoreViaHttp(
  hub: string,
  req: RestoreReq,
  to: string,
  post: Post,
): Promise<{ size: number; cp: any }> {
  const res: http.IncomingMessage = await post(hub, '/restore', req, true);
  const size = Number(res.headers['content-length']);
  const cp = JSON.parse(String(res.headers['x-rephub-checkpoint'] ?? '{}'));
  const n = to.startsWith('nbd://') ? await writeToNbd(res, to, size) : await writeToFile(res, to, size);
  if (n !== size) throw new Error(`restore of ${req.volume} cut short: ${n} of ${size} bytes (see the hub's log)`);
  return { size, cp };
}
