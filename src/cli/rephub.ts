#!/usr/bin/env node
// rephub: the replication hub (default command) and its operator subcommands.
import { Command, InvalidArgumentError, Option } from 'commander';
import { quietOnEpipe } from './stdout-epipe';
import { VERSION } from './version';
import { addEventsCommand } from './events-command';
import { addStatusCommand } from './status-command';
import * as path from 'node:path';
import * as http from 'node:http';
import { Hub } from '../hub/hub';
import { openFileTarget, openDirectTarget } from '../hub/replica';
import { isRbdPath, withRbd } from '../hub/rbd-target';
import { parseRbdSpec } from '../../storage/rbd-volume';
import { rbdUnavailable } from '../../native/rbd';
import { LmdbStateStore } from '../../storage/state';
import { makeLogger } from '../log';
import { parseHostPort, parseVolSpec, parseSize, parseMillis, fillLaunch, warnIfNoNative, parseDuration } from './args';
import { hubResyncLimit } from './bandwidth-flags';
import { verifyCommand } from './verify-command';
import { addVolumeCommands } from './volume-command';
import { enabled as tlsEnabled, serverOptions } from '../security';
import { FileLock, LockHeldError, lockHubState } from '../../storage/lock';
import { TOKEN_FILE_ENV, cliTokenFile, hubToken, readTokenFile, readableByOthers } from './admin-token';
import type { Logger } from '../log';
import { JournalFlags, addJournalCommands, journalConfig, journalServeOptions } from './journal-command';

/** Exit codes of `rephub serve`: documented in --help. */
const EXIT_START_FAILED = 2;
const EXIT_LOCKED = 3;

type VerifyFlags = { verifyRate: string; verifyEvery: string; maxResyncRate: string };

const collect = (v: string, prev: string[]) => [...prev, v];

async function serve(
  o: VerifyFlags &
    JournalFlags & {
      logPretty?: boolean;
      logLevel?: string;
      listen: string;
      vol: string[];
      data: string;
      http: string;
      nbd: string;
      regionSize: string;
      tlsCert?: string;
      tlsKey?: string;
      tlsCa?: string;
      pskFile?: string;
      nbdTls?: boolean;
      commitInterval: string;
      cache: string;
      adminTokenFile?: string;
    },
) {
  if (o.logPretty) process.env.LOG_PRETTY = '1';
  const log = makeLogger('rephub', o.logLevel);
  warnIfNoNative(log);
  const listen = parseHostPort(o.listen, '--listen');
  const httpAddr = parseHostPort(o.http, '--http');
  const nbdAddr = parseHostPort(o.nbd, '--nbd');
  const regionSize = parseSize(o.regionSize, '--region-size');
  const commitIntervalMs = parseMillis(o.commitInterval, '--commit-interval', 1000);
  if (o.vol.length === 0) throw new Error('give at least one --vol (e.g. --vol V1R)');
  const volumes = o.vol.map(parseVolSpec);
  checkRbdVolumes(volumes);
  const { locks, adminToken } = claimHubState(o.data, volumes, o.adminTokenFile, log);
  const store = new LmdbStateStore(path.resolve(o.data));
  const tls = checkTls(o, log);
  if (o.cache !== 'writeback' && o.cache !== 'none') throw new Error(`--cache ${o.cache}: writeback or none`);
  const hub = new Hub({
    volumes,
    store,
    log,
    regionSize,
    layersDir: path.resolve(o.data, 'layers'),
    tls,
    nbdTls: !!o.nbdTls,
    session: { commitIntervalMs, resyncRate: hubResyncLimit(o.maxResyncRate) },
    openTarget: withRbd(o.cache === 'none' ? openDirectTarget : openFileTarget),
    adminToken,
    verify: verifyOptions(o),
    journal: journalConfig(o, o.data),
    version: VERSION,
  });
  const a = await hub.listen(listen.host, listen.port);
  const h = await hub.listenHttp(httpAddr.host, httpAddr.port);
  const n = await hub.listenNbd(nbdAddr.host, nbdAddr.port);
  log.info(
    {
      listen: `${a.address}:${a.port}`,
      http: `http://${h.address}:${h.port}/status`,
      nbd: `${n.address}:${n.port}`,
      data: path.resolve(o.data),
      volumes,
    },
    'rephub listening',
  );
  stopOnSignals(hub, locks, log);
}

/** SIGINT and SIGTERM close the hub in order (sessions, checkpoints, store), then drop its locks. */
function stopOnSignals(hub: Hub, locks: FileLock[], log: ReturnType<typeof makeLogger>): void {
  const stop = async (sig: string) => {
    log.info({ signal: sig }, 'shutting down');
    await hub.close();
    for (const l of locks) l.release();
    process.exit(0);
  };
  process.on('SIGINT', () => void stop('SIGINT'));
  process.on('SIGTERM', () => void stop('SIGTERM'));
}

function checkTls(
  o: { tlsCert?: string; tlsKey?: string; tlsCa?: string; pskFile?: string; listen: string },
  log: Logger,
) {
  const tls = { cert: o.tlsCert, key: o.tlsKey, ca: o.tlsCa, pskFile: o.pskFile };
  if (!tlsEnabled(tls))
    log.warn(
      { listen: o.listen },
      'agent link is plaintext and unauthenticated: use --tls-* or --psk-file outside a lab',
    );
  else serverOptions(tls); // fail fast on bad files
  return tls;
}

/**
 * Before anything opens LMDB or a recovery volume: this hub's exclusive locks on --data and on
 * each recovery volume (held until the process ends), then the operator API's admin token.
 */
function claimHubState(
  data: string,
  volumes: { path: string }[],
  tokenFile: string | undefined,
  log: Logger,
): { locks: FileLock[]; adminToken: string } {
  const dataDir = path.resolve(data);
  // An RBD image is fenced by its exclusive lock, taken when it is opened (hub/rbd-target.ts).
  const locks = lockHubState(
    dataDir,
    volumes.filter((v) => !isRbdPath(v.path)).map((v) => v.path),
  );
  if (locks[0].kind === 'pidfile')
    log.warn(
      { lock: locks[0].path },
      'native addon missing: --data is locked with a pid file, which is weaker than flock',
    );
  const t = hubToken(tokenFile, dataDir);
  if (t.created) log.info({ adminTokenFile: t.file }, 'created the admin token for operator actions (mode 0600)');
  else if (readableByOthers(t.file))
    log.warn({ adminTokenFile: t.file }, 'the admin token file is readable by other users: chmod 600 it');
  return { locks, adminToken: t.token };
}

/** `rbd:` volumes: well formed, and librbd loadable, before the hub starts. */
function checkRbdVolumes(volumes: { name: string; path: string }[]): void {
  const rbd = volumes.filter((v) => isRbdPath(v.path));
  for (const v of rbd) parseRbdSpec(v.path); // throws a clear error
  const why = rbd.length ? rbdUnavailable() : '';
  if (why) throw new Error(`--vol ${rbd[0].name}=${rbd[0].path}: ${why}`);
}

/** --verify-rate and --verify-every. */
function verifyOptions(o: VerifyFlags) {
  return {
    rateBytesPerSecond: parseSize(o.verifyRate, '--verify-rate'),
    everyMs: parseDuration(o.verifyEvery, '--verify-every'),
  };
}

quietOnEpipe();
const program = new Command('rephub')
  .description(
    'rephub: block replication hub. Keeps recovery volumes converged with the protected volumes of VM agents.',
  )
  .version(VERSION)
  .showHelpAfterError();

journalServeOptions(program.command('serve', { isDefault: true }))
  .description('run the hub (the default command)')
  .option('--listen <host:port>', 'address for agent connections', '0.0.0.0:7000')
  .option(
    '--vol <spec>',
    'recovery volume: V1R (file V1R protects agent volume V1) or V1=/path/to/V1R.img; append @VM to bind it to one VM; repeat for more. A missing file is created sparse and synced in full; an existing file with data the hub has no record of (seeded from a backup or an earlier copy, lost hub state) is synced by checksum, automatically: only the 4 KiB blocks that differ are copied, never a blind copy over it. V1=rbd:POOL/IMAGE[:conf=/etc/ceph/ceph.conf][:id=USER]: a Ceph RBD image (librbd), created at the protected volume size if missing, opened with the exclusive lock of the image while an agent is attached (a second hub is refused it until this one lets go); an image another hub wrote since the record of this hub is resynced by checksum',
    collect,
    [],
  )
  .option(
    '--data <dir>',
    'directory for hub state (LMDB: volume ids, generations, dirty bitmaps, sync cursors)',
    './rephub-data',
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
  .option('--log-level <level>', 'trace, debug, info, warn, error', 'info')
  .option(
    '--nbd-tls',
    'require TLS (STARTTLS) on the NBD exports, with the --tls-cert/--tls-key certificate; with --tls-ca clients need certificates too',
  )
  .option('--max-resync-rate <bytes/s>', 'resync bytes/s all agents together send this hub (0: no cap)', '0')
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
  .addHelpText(
    'after',
    `
Exit codes: 0 stopped by SIGINT/SIGTERM; ${EXIT_START_FAILED} bad arguments or a failure at start (an unreadable or empty --admin-token-file);
${EXIT_LOCKED} another process holds --data (DATA/rephub.lock) or a recovery volume (PATH.lock, or the block device itself).`,
  )
  .action(serve);

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

program.parseAsync().catch((e) => {
  process.stderr.write(`rephub: ${e.message}\n`);
  process.exit(e instanceof LockHeldError ? EXIT_LOCKED : EXIT_START_FAILED);
});
