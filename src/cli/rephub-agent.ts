#!/usr/bin/env -S node --initial-old-space-size=96
// rephub-agent: serves the VM's disk images over NBD and mirrors every write to the hub.
import { Command } from 'commander';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { ReplicationAgent, AgentVolumeSpec, DEFAULT_MAX_LAG_MS, DEFAULT_LOOP_FLUSH_MAX_MS } from '../agent/agent';
import { DirtyLog } from '../../storage/dirty-log';
import { fingerprintOf } from '../../storage/volume-identity';
import { NbdServer } from '../nbd/server';
import { ExportRegistry } from '../nbd/exports';
import { MirroredExport } from './agent-export';
import { FileVolume } from '../../storage/volume';
import { makeLogger, Logger } from '../log';
import { parseHubList, checkName, checkPath, parseSize, parseMillis, warnIfNoNative, parseMaxLag } from './args';
import { noteHeapFlags } from './heap-flags';
import { enabled as tlsEnabled, clientOptions } from '../security';
import { AgentBandwidthFlags, agentBandwidth } from './bandwidth-flags';
import { serveAgentHttp } from './agent-http';
import { renderAgentStatus } from './agent-status';
import { quietOnEpipe } from './stdout-epipe';
import { VERSION } from './version';
import { parseListenAddr, ListenAddr } from './listen-addr';
import { ParentWatch, parseParentFd } from './parent-watch';
import { agentConfigCheck, checkAgentOptions, defaultStateDir, loadAgentConfig } from './agent-settings';
import { EXIT_CODES_HELP, EXIT_START, EXIT_USAGE, ExitError, exitWith, usageErrorsExit2 } from './exit-codes';
import { agentSignals } from './agent-stop';

// An extent of the activity log goes cold only after this long without writes: a guest writing it
// again soon would pay a log write and an fdatasync on its write path (issue 17: half the writes
// of a 4 KiB random-write job with a flush after each did, when quiet extents cooled every second).
const COOL_IDLE_MS = 2000;

const collect = (v: string, prev: string[]) => [...prev, v];

type RunOptions = AgentBandwidthFlags & {
  config?: string;
  check?: boolean;
  logPretty?: boolean;
  logLevel?: string;
  hub: string;
  export: string[];
  nbd: string;
  state: string;
  vm: string;
  regionSize: string;
  maxQueue: string;
  flushMarkerGap: string;
  maxLag: string;
  loopFlushMax: string;
  http: string;
  tlsCert?: string;
  tlsKey?: string;
  tlsCa?: string;
  tlsServername?: string;
  pskFile?: string;
  seekData?: boolean;
  readyFd?: string;
  parentFd?: string;
};

/** Each --export NAME=PATH opened, with its dirty log in the state directory. */
function openVolumes(o: RunOptions, vm: string, log: Logger): (AgentVolumeSpec & { image: string })[] {
  const regionSize = parseSize(o.regionSize, '--region-size');
  if (o.export.length === 0)
    throw new Error('give at least one --export NAME=PATH (e.g. --export V1=/var/lib/vm/V1.img)');
  fs.mkdirSync(o.state, { recursive: true });
  const volumes = o.export.map((spec) => {
    const eq = spec.indexOf('=');
    if (eq <= 0) throw new Error(`--export: expected NAME=PATH, got "${spec}"`);
    const name = checkName(spec.slice(0, eq), '--export name');
    const file = checkPath(spec.slice(eq + 1), '--export path');
    const target = FileVolume.open(file);
    if (target.sizeBytes % 512 !== 0 || target.sizeBytes === 0)
      throw new Error(`--export ${name}: ${file} is ${target.sizeBytes} bytes, not a positive multiple of 512`);
    const dlog = DirtyLog.open(path.join(o.state, `${vm}.${name}.dirty`), target.sizeBytes, regionSize, true, {
      coolIdleMs: COOL_IDLE_MS,
    });
    const ctx = { volume: name, image: file, sizeBytes: target.sizeBytes, dirtyBytes: dlog.bitmap.dirtyBytes };
    // Before any write reaches the image: is it the image the log knew? (storage/volume-identity.ts)
    const { lineage, change } = dlog.beginRun(fingerprintOf(file)!);
    if (change)
      log.error(
        { ...ctx, change, uuid: lineage[0].toString('hex') },
        'protected image is not the one this dirty log knew: new volume identity; the hub will resync it by checksums',
      );
    log.info({ ...ctx, freshLog: dlog.fresh, uuid: lineage[0].toString('hex') }, 'protected volume');
    return { name, target, log: dlog, image: file };
  });
  if (new Set(volumes.map((v) => v.name)).size !== volumes.length)
    throw new Error('--export: a volume name is given twice');
  return volumes;
}

/** Listens on TCP or a UNIX socket; the URIs a client uses for each export. */
async function listenNbd(nbd: NbdServer, at: ListenAddr, names: string[]): Promise<string[]> {
  if (at.kind === 'unix') {
    await nbd.listenUnix(at.path);
    return names.map((n) => `nbd+unix:///${n}?socket=${at.path}`);
  }
  const a = await nbd.listen(at.host, at.port);
  return names.map((n) => `nbd://${a.address}:${a.port}/${n}`);
}

function parseReadyFd(v: string): number {
  const fd = Number(v);
  if (!Number.isInteger(fd) || fd < 3 || fd > 1023) throw new Error(`--ready-fd ${v}: a descriptor number, 3 to 1023`);
  return fd;
}

/** s6-style readiness: one line on the descriptor, then close it, once every export is served. */
function notifyReady(fd: number): void {
  fs.writeSync(fd, 'ready\n');
  fs.closeSync(fd);
}

/** Settings checked (exit 2 with one line per problem), then the daemon; `--check` stops after the checks. */
async function run(cmd: Command): Promise<void> {
  if (cmd.opts().check) {
    process.exitCode = agentConfigCheck(cmd);
    return;
  }
  const { cfg, problems } = loadAgentConfig(cmd);
  if (cfg || !cmd.opts().config) checkAgentOptions(cmd, cfg, problems, true);
  if (!problems.ok) throw new ExitError(problems.lines.join('\n'), EXIT_USAGE);
  await main(cmd.opts() as RunOptions, cmd, cfg?.file);
}

/** Listening on `flag`'s address, or exit 3 naming it. */
function listening<T>(flag: string, at: string, p: Promise<T>): Promise<T> {
  return p.catch((e) => {
    throw new ExitError(`${flag} ${at}: ${(e as Error).message}`, EXIT_START);
  });
}

async function main(o: RunOptions, cmd: Command, config: string | undefined) {
  if (o.logPretty) process.env.LOG_PRETTY = '1';
  const log = makeLogger('rephub-agent', o.logLevel);
  warnIfNoNative(log);
  noteHeapFlags(log);
  const [hub, ...moreHubs] = parseHubList(o.hub);
  const nbdAddr = parseListenAddr(o.nbd, '--nbd');
  const readyFd = o.readyFd === undefined ? undefined : parseReadyFd(o.readyFd);
  const parentFd = o.parentFd === undefined ? undefined : parseParentFd(o.parentFd);
  const vm = checkName(o.vm, '--vm');
  const bandwidth = agentBandwidth(o);
  const volumes = openVolumes(o, vm, log);
  const files = { cert: o.tlsCert, key: o.tlsKey, ca: o.tlsCa, pskFile: o.pskFile };
  // With several hubs, each is verified by its own host name unless --tls-servername names one for all.
  const servername = o.tlsServername ?? (moreHubs.length ? undefined : hub.host);
  const secure = tlsEnabled(files) ? clientOptions(files, vm, servername) : undefined;
  if (!secure)
    log.warn({ hub: o.hub }, 'agent link is plaintext and unauthenticated: use --tls-* or --psk-file outside a lab');
  const agent = new ReplicationAgent({
    hubHost: hub.host,
    hubPort: hub.port,
    moreHubs,
    vm,
    volumes,
    log,
    maxQueueBytes: parseSize(o.maxQueue, '--max-queue'),
    flushMarkerGapMs: parseMillis(o.flushMarkerGap, '--flush-marker-gap', 60_000),
    maxLagMs: parseMaxLag(o.maxLag, '--max-lag'),
    loopFlushMaxMs: parseMillis(o.loopFlushMax, '--loop-flush-max', 1000),
    tls: secure,
    seekData: o.seekData !== false,
    bandwidth,
  });
  const exports = new ExportRegistry();
  for (const v of volumes) exports.add(new MirroredExport(v.name, v.target, agent));
  const nbd = new NbdServer(exports, log, undefined, agent.writePool);
  const web = await listening(
    '--http',
    o.http,
    serveAgentHttp(o.http, () => ({ ...agent.status(), nbd: nbd.stats })),
  );
  const uris = await listening('--nbd', o.nbd, listenNbd(nbd, nbdAddr, exports.names()));
  agent.start();
  log.info({ nbd: uris, hub: o.hub, vm, state: path.resolve(o.state), config }, 'rephub-agent serving');
  if (readyFd !== undefined) notifyReady(readyFd);
  let watch: ParentWatch | undefined;
  const stop = agentSignals({ nbd, web, agent, volumes, log, cmd, config, closing: () => watch?.close() });
  if (parentFd !== undefined)
    watch = new ParentWatch(parentFd, {
      openConnections: () => nbd.openConnections,
      stop: (why) => void stop(why),
      log,
    });
}

quietOnEpipe();
const program = new Command('rephub-agent')
  .description(
    'rephub agent: serves protected volumes over NBD (qemu -drive file=nbd://127.0.0.1:10809/V1) and mirrors every write to the hub',
  )
  .version(VERSION)
  .showHelpAfterError();
usageErrorsExit2(program);

const runCmd = program
  .command('run', { isDefault: true })
  .description('serve and mirror (the default command)')
  .option(
    '--config <file>',
    'TOML file of these options, keys named like the flags (hub = "h1:7000", export = ["V1=/var/lib/vm/V1.img"]); flags given here win over it; SIGHUP reads it again (log-level applies; other changes are logged and need a restart)',
  )
  .option('--check', 'check the options and --config file (paths, key files) and exit: 0 if fine, 2 otherwise')
  .option(
    '--hub <host:port,...>',
    'hub address; several (h1:7000,h2:7000, at most 16): when the hub is gone the agent moves to the next, with backoff, and round again',
    '127.0.0.1:7000',
  )
  .option(
    '--export <name=path>',
    'protected volume: NAME=PATH of a raw image or block device; repeat for more',
    collect,
    [],
  )
  .option(
    '--nbd <host:port|unix:path>',
    'NBD listen address: TCP, or a UNIX socket (unix:/run/x/nbd.sock)',
    '127.0.0.1:10809',
  )
  .option(
    '--state <dir>',
    'directory for the persistent dirty logs; the default is $STATE_DIRECTORY (systemd StateDirectory=) when set, else ./rephub-agent-state',
    defaultStateDir(),
  )
  .option(
    '--vm <name>',
    'VM name reported to the hub; a cloned host with the same name, running at the same time, is refused the volumes this one holds',
    os.hostname().replace(/[^A-Za-z0-9._-]/g, '-') || 'vm',
  )
  .option('--region-size <bytes>', 'dirty-log region size, 4K..1M', '64K')
  .option('--http <host:port|unix:path|off>', 'agent status endpoint (GET /status)', '127.0.0.1:10899')
  .option('--ready-fd <n>', 'write "ready" and a newline to descriptor N once every export is served, then close it')
  .option(
    '--parent-fd <n>',
    'a pipe from the parent (rephub-qemu): at its EOF, serve on until NBD clients and the QEMU it named are gone, then stop as on SIGTERM',
  )
  .option('--log-pretty', 'human-readable logs instead of JSON lines')
  .option('--log-level <level>', 'trace, debug, info, warn, error (default: $LOG_LEVEL, else info)')
  .option('--tls-cert <file>', 'agent certificate (PEM); its CN must be the --vm name')
  .option('--tls-key <file>', 'agent private key (PEM)')
  .option('--tls-ca <file>', 'CA that signs the hub certificate (PEM)')
  .option('--tls-servername <name>', 'name to verify in the hub certificate (default: the --hub host)')
  .option(
    '--psk-file <file>',
    'TLS with a pre-shared key instead of certificates: identity:hexkey lines; identity = --vm',
  )
  .option(
    '--max-queue <bytes>',
    'mirror bytes buffered towards the hub; beyond it writes become dirty regions (with --max-lag on, write replies wait past half of it)',
    '64M',
  )
  .option(
    '--flush-marker-gap <ms>',
    'guest flushes tell the hub at most this often (a journal point each); those between share the next (0: each its own)',
    '5',
  )
  .option(
    '--max-lag <ms>',
    "bound on how far the hub's copy may fall behind: while writes the hub has not applied and overflowed writes would take longer than this to reach it, replies to the guest's writes wait (never the writes; at most 4x this, and never while the link is down or stalled); 0: off",
    String(DEFAULT_MAX_LAG_MS),
  )
  .option(
    '--loop-flush-max <ms>',
    "a guest flush that is the only request in flight syncs the image on the agent's event loop (no thread handoffs) while syncs take under this; 0: always in the threadpool",
    String(DEFAULT_LOOP_FLUSH_MAX_MS),
  )
  .option('--max-rate <bytes/s>', 'cap on the link to the hub, e.g. 50M (0: none)', '0')
  .option('--resync-share <percent>', 'share of --max-rate resync keeps while mirrored writes want more', '30')
  .option('--max-resync-rate <bytes/s>', 'resync at most this much of --max-rate (0: all writes leave)', '0')
  .option(
    '--no-seek-data',
    'do not trust SEEK_DATA/SEEK_HOLE to find holes (a file system with a hole-reporting bug): read everything; zero chunks are still not sent',
  )
  .addHelpText('after', EXIT_CODES_HELP)
  .action((_o, cmd: Command) => run(cmd).catch((e) => exitWith('rephub-agent', e, EXIT_START)));

program
  .command('config')
  .description('config file tools')
  .command('check <file>')
  .description(
    'check a --config file and what it names (images, --state, key files); one line per problem; exit 0 or 2',
  )
  .action((file: string) => {
    runCmd.setOptionValueWithSource('config', file, 'cli');
    process.exitCode = agentConfigCheck(runCmd);
  });

program
  .command('status')
  .description("show this agent's side: hub connection, send queue, dirty bytes per volume")
  .option('--agent <url>', 'agent status URL', 'http://127.0.0.1:10899')
  .option('--json', 'print JSON for scripts')
  .action(async (o) => {
    const url = o.agent.replace(/\/$/, '') + '/status';
    try {
      const st: any = await (await fetch(url)).json();
      if (o.json) {
        process.stdout.write(JSON.stringify(st, null, 2) + '\n');
        return;
      }
      process.stdout.write(renderAgentStatus(st));
    } catch (e: any) {
      process.stderr.write(`rephub-agent: cannot reach ${url}: ${e.cause?.message ?? e.message}\n`);
      process.exit(2);
    }
  });

program.parse();
