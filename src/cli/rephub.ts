#!/usr/bin/env -S node --initial-old-space-size=96
// rephub: the replication hub (default command) and its operator subcommands.
import { Command, InvalidArgumentError, Option } from 'commander';
import * as http from 'node:http';
import { makeLogger } from '../log';
import { fillLaunch } from './args';
import { quietOnEpipe } from './stdout-epipe';
import { VERSION } from './version';
import { addEventsCommand } from './events-command';
import { addStatusCommand } from './status-command';
import { addVolumeCommands } from './volume-command';
import { verifyCommand } from './verify-command';
import { LockHeldError } from '../../storage/lock';
import { TOKEN_FILE_ENV, cliTokenFile, readTokenFile } from './admin-token';
import { addJournalCommands, journalServeOptions } from './journal-command';
import { EXIT_CODES_HELP, EXIT_START, EXIT_USAGE, exitWith, usageErrorsExit2 } from './exit-codes';
import { defaultDataDir } from './hub-settings';

const collect = (v: string, prev: string[]) => [...prev, v];

quietOnEpipe();

const program = new Command('rephub')
  .description(
    'rephub: block replication hub. Keeps recovery volumes converged with the protected volumes of VM agents.',
  )
  .version(VERSION)
  .showHelpAfterError();
usageErrorsExit2(program);

const serve = journalServeOptions(program.command('serve', { isDefault: true }))
  .description('run the hub (the default command)')
  .option(
    '--config <file>',
    'TOML file of these options, keys named like the flags (region-size = "64K", vol = ["V1R", "V2R"], journal = false); flags given here win over it; SIGHUP reads it again (volumes added start, removed ones stop; other keys need a restart)',
  )
  .option('--listen <host:port>', 'address for agent connections', '0.0.0.0:7000')
  .option(
    '--vol <spec>',
    'recovery volume: V1R (file V1R protects agent volume V1) or V1=/path/to/V1R.img; append @VM to bind it to one VM; repeat for more. A missing file is created sparse and synced in full; an existing file with data the hub has no record of (seeded from a backup or an earlier copy, lost hub state) is synced by checksum, automatically: only the 4 KiB blocks that differ are copied, never a blind copy over it. V1=rbd:POOL/IMAGE[:conf=/etc/ceph/ceph.conf][:id=USER]: a Ceph RBD image (librbd), created at the protected volume size if missing, opened with the exclusive lock of the image while an agent is attached (a second hub is refused it until this one lets go); an image another hub wrote since the record of this hub is resynced by checksum',
    collect,
    [],
  )
  .option(
    '--data <dir>',
    'directory for hub state (LMDB: volume ids, generations, dirty bitmaps, sync cursors); the default is $STATE_DIRECTORY (systemd StateDirectory=) when set, else ./rephub-data',
    defaultDataDir(),
  )
  .option(
    '--http <host:port>',
    'status and operator endpoint (GET /status, POST /failover-test/start ...)',
    '127.0.0.1:7080',
  )
  .option('--nbd <host:port>', 'NBD exports for failover test and failover', '127.0.0.1:10810')
  .addOption(new Option('--region-size <bytes>', 'dirty-bitmap region size for new replicas, 4K..1M').default('64K'))
  .option('--tls-cert <file>', 'hub certificate (PEM); with --tls-key and --tls-ca: TLS with mutual authentication')
  .option('--tls-key <file>', 'hub private key (PEM)')
  .option('--tls-ca <file>', 'CA that signs agent certificates; an agent is the VM named by its certificate CN')
  .option('--psk-file <file>', 'TLS with pre-shared keys instead: identity:hexkey lines; identity = VM name')
  .option(
    '--cache <mode>',
    'recovery volume writes: writeback (page cache) or none (large aligned writes with O_DIRECT: less CPU and no cache pollution, but each waits for the device)',
    'writeback',
  )
  .option(
    '--commit-interval <ms>',
    'group commit: at most one fdatasync of the recovery volumes per interval while writes stream in (0: back to back)',
    '5',
  )
  .option('--log-pretty', 'human-readable logs instead of JSON lines')
  .option('--log-level <level>', 'trace, debug, info, warn, error (default: $LOG_LEVEL, else info)')
  .option(
    '--nbd-tls',
    'require TLS (STARTTLS) on the NBD exports, with the --tls-cert/--tls-key certificate; with --tls-ca clients need certificates too',
  )
  .option('--verify-rate <bytes/s>', 'online verify scan rate per hub, bytes per second (0: unlimited)', '100M')
  .option(
    '--verify-every <duration>',
    'periodic scrub: verify every attached volume (and resync what differs) every DURATION, e.g. 1d or 6h',
    'off',
  )
  .option(
    '--admin-token-file <file>',
    'token that operator actions (POST: failover-test, failover, failback) must send as "Authorization: Bearer"; default: DATA/admin-token, created (mode 0600) if missing',
  )
  .option('--max-resync-rate <bytes/s>', 'resync bytes/s all agents together send this hub (0: no cap)', '0')
  .addHelpText('after', EXIT_CODES_HELP)
  .action(async (_o, cmd: Command) => (await import('./hub-daemon')).serveHub(cmd)); // loaded only to serve: the operator subcommands start fast

program
  .command('config')
  .description('config file tools')
  .command('check <file>')
  .description(
    'check a --config file (and what it names: volume paths, --data, key files) without starting; one line per problem, exit 0 if none, 2 otherwise',
  )
  .action(async (file: string) => {
    process.exitCode = (await import('./hub-daemon')).configCheck(serve, file);
  });

addEventsCommand(program);
addStatusCommand(program);

// ---- operator actions (POST): each subcommand takes --admin-token-file through tokenOption ----

let adminTokenFile: string | undefined; // the running subcommand's --admin-token-file, if given

const TOKEN_HELP = `the hub's admin token (default: $${TOKEN_FILE_ENV}, else ./rephub-data/admin-token, the hub's default under --data)`;

/** Adds --admin-token-file to a subcommand that POSTs. */
function tokenOption(cmd: Command): Command {
  return cmd.option('--admin-token-file <file>', TOKEN_HELP).hook('preAction', (_, c) => {
    adminTokenFile = c.opts().adminTokenFile;
  });
}

/** POST an operator action; `raw`: the Response itself (a streamed answer), checked for success. */
async function post(hub: string, action: string, body: object, raw = false): Promise<any> {
  const url = hub.replace(/\/$/, '') + action;
  const token = readTokenFile(cliTokenFile(adminTokenFile));
  if (raw) return postStream(url, body, token);
  const res = await fetch(url, {
    method: 'POST',
    body: JSON.stringify(body),
    headers: { 'content-type': 'application/json', authorization: `Bearer ${token}` },
  }).catch((e) => {
    throw new Error(`cannot reach ${url}: ${e.cause?.message ?? e.message}`);
  });
  const out: any = await res.json();
  if (!res.ok) throw new Error(out.error ?? `HTTP ${res.status}`);
  return out;
}

/**
 * POST with an answer to stream (restore): node's http rather than fetch, whose web streams
 * cost several times more CPU per byte. Resolves with the response once its head is in; an
 * error answer (JSON) is thrown.
 */
function postStream(url: string, body: object, token: string): Promise<http.IncomingMessage> {
  return new Promise((resolve, reject) => {
    const req = http.request(
      url,
      { method: 'POST', headers: { 'content-type': 'application/json', authorization: `Bearer ${token}` } },
      (res) => {
        if (res.statusCode === 200) return resolve(res);
        let text = '';
        res.setEncoding('utf8');
        res
          .on('data', (c) => (text += c))
          .on('end', () => {
            let msg = `HTTP ${res.statusCode}`;
            try {
              msg = JSON.parse(text).error ?? msg;
            } catch {
              /* not JSON: keep the status */
            }
            reject(new Error(msg));
          });
      },
    );
    req.on('error', (e) => reject(new Error(`cannot reach ${url}: ${e.message}`)));
    req.end(JSON.stringify(body));
  });
}

// ---- --winner: one side, or NAME=side pairs ----
function parseWinner(v: string): string | Record<string, string> {
  const side = (x: string, what: string) => {
    if (x === 'recovery' || x === 'protected') return x;
    throw new InvalidArgumentError(`${what} must be recovery or protected, not "${x}"`);
  };
  if (!v.includes('=')) return side(v, '--winner');
  const out: Record<string, string> = {};
  for (const pair of v.split(',')) {
    const i = pair.indexOf('=');
    const name = pair.slice(0, i).trim();
    if (i <= 0 || !name) throw new InvalidArgumentError(`"${pair}" is not VOLUME=side`);
    if (name in out) throw new InvalidArgumentError(`volume ${name} named twice`);
    out[name] = side(pair.slice(i + 1).trim(), `the winner of ${name}`);
  }
  return out;
}

const ft = program
  .command('failover-test')
  .description('boot-test the replica from a point-in-time view while replication goes on');
tokenOption(ft.command('start'))
  .description('freeze a consistent point-in-time view of the recovery volumes and export it over NBD')
  .option('--hub <url>', 'hub operator URL', 'http://127.0.0.1:7080')
  .option('--vm <name>', 'only the volumes of this VM')
  .option(
    '--at <point>',
    'view the volumes as of a journal checkpoint: an id, an ISO 8601 time, "10 min ago" or latest (nothing is copied)',
  )
  .option(
    '--force',
    'take the view even if a volume is not converged (a torn replica, without a journal checkpoint to fall back to)',
  )
  .option('--launch <cmd>', 'start the recovery VM: {V1} style placeholders become the export URIs')
  .action(async (o) => {
    const r = await post(o.hub, '/failover-test/start', { vm: o.vm, force: !!o.force, at: o.at });
    const uris: Record<string, string> = {};
    for (const v of r.volumes) {
      uris[v.name] = v.uri;
      process.stdout.write(`${v.name}\t${v.uri}${atText(v.checkpoint)}\n`);
    }
    if (!o.launch) return;
    const { spawn } = await import('node:child_process');
    const log = makeLogger('rephub');
    const cmd = fillLaunch(o.launch, uris);
    log.info({ cmd }, 'launching recovery VM');
    const p = spawn('/bin/sh', ['-c', cmd], { stdio: 'inherit' });
    const code = await new Promise<number | null>((res) => p.on('exit', (c, sig) => res(sig ? 128 : c)));
    log.info({ cmd, exitCode: code }, 'recovery VM exited; the test views stay until `rephub failover-test stop`');
    process.exitCode = code ?? 1;
  });
tokenOption(ft.command('stop'))
  .description('shut the test exports and discard the test layers')
  .option('--hub <url>', 'hub operator URL', 'http://127.0.0.1:7080')
  .option('--force', 'disconnect NBD clients still attached to the views (refused otherwise)')
  .action(async (o) => {
    const r = await post(o.hub, '/failover-test/stop', { force: !!o.force });
    for (const v of r.volumes)
      process.stdout.write(
        `${v.name}\tdiscarded (kept ${v.keptBytes} bytes of point-in-time data, test wrote ${v.testWrittenBytes} bytes)\n`,
      );
  });
tokenOption(program.command('failover'))
  .description('the protected site is gone: promote the recovery volumes and export them read-write over NBD')
  .option('--hub <url>', 'hub operator URL', 'http://127.0.0.1:7080')
  .option(
    '--at <point>',
    'promote a journal checkpoint (an id, an ISO 8601 time, "10 min ago" or latest): the recovery volumes are rolled back to it, its newer checkpoints dropped, and failback treats everything after it as changed',
  )
  .option('--vm <name>', 'the VM --at refers to (needed when the hub protects several)')
  .option(
    '--force',
    'fail over although an agent of the protected site is still connected, or a volume is torn by a resync with no checkpoint to fall back to',
  )
  .action(async (o) => {
    const r = await post(o.hub, '/failover', { force: !!o.force, at: o.at, vm: o.vm });
    for (const v of r.volumes)
      process.stdout.write(
        `${v.name}\t${v.uri}\tgeneration ${v.generation}${atText(v.checkpoint)}${v.rolledBackBytes ? `\trolled back ${v.rolledBackBytes} bytes` : ''}\n`,
      );
  });

/** ", at checkpoint ID (TIME)" for a volume taken at a journal checkpoint. */
function atText(cp: { id: number; time: string } | null | undefined): string {
  return cp ? `\tat checkpoint ${cp.id} (${cp.time})` : '';
}
tokenOption(program.command('failback'))
  .description('the protected site is back: write back only the changed regions, then protect in the normal direction')
  .option('--hub <url>', 'hub operator URL', 'http://127.0.0.1:7080')
  .option(
    '--winner <side>',
    'when both sides changed: whose changes win, recovery or protected, for all volumes or per volume (V1=recovery,V2=protected)',
    parseWinner,
  )
  .option('--force', 'disconnect NBD clients still attached to the promoted volumes (refused otherwise)')
  .action(async (o) => {
    const r = await post(o.hub, '/failback', { winner: o.winner, force: !!o.force });
    for (const v of r.volumes)
      process.stdout.write(
        `${v.name}\tmoved ${v.movedBytes} bytes; changed on recovery side ${v.recoveryChangedBytes}, on protected side ${v.protectedChangedBytes}; winner ${v.winner}\n`,
      );
  });

tokenOption(program.command('verify'))
  .description(
    'compare the recovery volumes with the protected volumes online (region checksums; no volume data crosses the link); exit 0 equal, 1 mismatches found, 2 error',
  )
  .option('--hub <url>', 'hub operator URL', 'http://127.0.0.1:7080')
  .option('--vm <name>', 'only the volumes of this VM')
  .option('--volume <name>', 'only this volume')
  .option('--report-only', 'only report mismatched regions; do not mark them for resync')
  .option('--json', 'print JSON for scripts')
  .action(async (o) => {
    process.exitCode = await verifyCommand(o, post);
  });

addJournalCommands(program, tokenOption, post);
addVolumeCommands(program, tokenOption, post);

program.parseAsync().catch((e) => exitWith('rephub', e, e instanceof LockHeldError ? EXIT_START : EXIT_USAGE));
