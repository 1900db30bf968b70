// `rephub serve`: the hub daemon's life from the command line to its exit. Settings first (config
// file under the flags, every one checked: exit 2 with one line per problem), then the locks
// (exit 3 if held), the state store and the listeners (exit 3 on failure), then signals: SIGHUP
// reloads the config file (cli/reload.ts), SIGINT/SIGTERM stop in logged steps and exit with
// a code that says whether everything was saved. `rephub config check` is the first part alone.
import { VERSION } from './version';
import * as net from 'node:net';
import * as path from 'node:path';
import type { Command } from 'commander';
import { Hub } from '../hub/hub';
import { openFileTarget, openDirectTarget } from '../hub/replica';
import { isRbdPath, withRbd } from '../hub/rbd-target';
import { LmdbStateStore } from '../../storage/state';
import { makeLogger, Logger, checkLogLevel } from '../log';
import { warnIfNoNative } from './args';
import { noteHeapFlags } from './heap-flags';
import { FileLock, lockHubState } from '../../storage/lock';
import { hubToken, readableByOthers } from './admin-token';
import { ConfigFile, applyConfig, optionLabel, readConfigFile } from './config-file';
import { HubFlags, HubSettings, resolveHubSettings } from './hub-settings';
import { HubReloader } from './reload';
import { EXIT_OK, EXIT_RUNTIME, EXIT_START, EXIT_USAGE, ExitError } from './exit-codes';

/** The flags over the config file, checked; throws an ExitError(2) listing every problem. */
export function settingsOf(cmd: Command, create: boolean): { s: HubSettings; cfg?: ConfigFile; logLevel?: string } {
  const r = resolveAll(cmd, create);
  if (!r.settings) throw new ExitError(r.problems.join('\n'), EXIT_USAGE);
  return { s: r.settings, cfg: r.cfg, logLevel: r.logLevel };
}

/** Reads --config into `cmd` (options from an earlier read reset first) and resolves everything. */
function resolveAll(cmd: Command, create: boolean) {
  for (const o of cmd.options) {
    const attr = o.attributeName();
    if (cmd.getOptionValueSource(attr) === 'config') cmd.setOptionValueWithSource(attr, o.defaultValue, 'default');
  }
  const file = cmd.opts().config as string | undefined;
  const cfg = file ? readConfigFile(file) : undefined;
  const problems = cfg ? applyConfig(cmd, cfg) : [];
  const o = cmd.opts() as HubFlags;
  const levelProblem = checkLogLevel(o.logLevel, optionLabel(cmd, cfg, 'logLevel'));
  if (levelProblem) problems.push(levelProblem);
  const r = resolveHubSettings(cmd, cfg, o, create);
  problems.push(...r.problems.lines);
  return { settings: problems.length ? undefined : r.settings, problems, cfg, logLevel: o.logLevel };
}

/** `rephub config check FILE`: every problem on stdout, one a line; exit 0 when there is none. */
export function configCheck(serveCmd: Command, file: string): number {
  serveCmd.setOptionValueWithSource('config', file, 'cli');
  try {
    const r = resolveAll(serveCmd, false);
    for (const line of r.problems) process.stdout.write(line + '\n');
    if (r.settings) process.stdout.write(`${r.cfg!.file}: OK (${r.settings.volumes.length} volumes)\n`);
    return r.settings ? EXIT_OK : EXIT_USAGE;
  } catch (e) {
    process.stdout.write((e as Error).message + '\n');
    return EXIT_USAGE;
  }
}

export async function serveHub(cmd: Command): Promise<void> {
  const { s, cfg, logLevel } = settingsOf(cmd, true);
  if (cmd.opts().logPretty) process.env.LOG_PRETTY = '1';
  const log = makeLogger('rephub', logLevel);
  warnIfNoNative(log);
  noteHeapFlags(log);
  log.debug({ settings: { ...s, adminTokenFile: s.adminTokenFile }, config: cfg?.file }, 'settings resolved');
  if (!tlsOn(s)) log.warn({ listen: `${s.listen.host}:${s.listen.port}` }, PLAINTEXT);
  const { locks, volumeLocks, adminToken } = atStart(() => claimHubState(s, log));
  const store = atStart(() => new LmdbStateStore(s.dataDir));
  const hub = new Hub({
    volumes: s.volumes,
    store,
    log,
    regionSize: s.regionSize,
    layersDir: path.resolve(s.dataDir, 'layers'),
    tls: s.tls,
    nbdTls: s.nbdTls,
    session: { commitIntervalMs: s.commitIntervalMs, resyncRate: s.resyncRate },
    version: VERSION,
    openTarget: withRbd(s.cache === 'none' ? openDirectTarget : openFileTarget),
    adminToken,
    verify: s.verify,
    journal: s.journal,
  });
  const listening = (flag: string, at: { host: string; port: number }, fn: () => Promise<net.AddressInfo>) =>
    fn().catch((e) => {
      throw new ExitError(`${flag} ${at.host}:${at.port}: ${(e as Error).message}`, EXIT_START);
    });
  const a = await listening('--listen', s.listen, () => hub.listen(s.listen.host, s.listen.port));
  const h = await listening('--http', s.http, () => hub.listenHttp(s.http.host, s.http.port));
  const n = await listening('--nbd', s.nbd, () => hub.listenNbd(s.nbd.host, s.nbd.port));
  log.info(
    {
      listen: `${a.address}:${a.port}`,
      http: `http://${h.address}:${h.port}/status`,
      nbd: `${n.address}:${n.port}`,
      data: s.dataDir,
      config: cfg?.file,
      volumes: s.volumes,
    },
    'rephub listening',
  );
  const reloader = new HubReloader(s, {
    hub,
    log,
    locks: volumeLocks,
    resolve: () => {
      const r = resolveAll(cmd, false);
      return { settings: r.settings, problems: r.problems, logLevel: r.logLevel };
    },
  });
  process.on('SIGHUP', () => {
    if (!cfg) return log.warn({ signal: 'SIGHUP' }, 'SIGHUP: no --config file to reload; ignored');
    log.info({ signal: 'SIGHUP', config: cfg.file }, 'reloading the config file');
    void reloader.reload();
  });
  stopOnSignals(hub, () => [...locks, ...volumeLocks.values()], log);
}

const PLAINTEXT = 'agent link is plaintext and unauthenticated: use --tls-* or --psk-file outside a lab';
const tlsOn = (s: HubSettings) => !!(s.tls.cert || s.tls.pskFile);

/** A failure past the checks (a lock held, a store that will not open): exit 3 unless it says otherwise. */
function atStart<T>(fn: () => T): T {
  try {
    return fn();
  } catch (e) {
    if (e instanceof ExitError) throw e;
    throw new ExitError((e as Error).message, EXIT_START);
  }
}

/**
 * SIGINT and SIGTERM close the hub in logged steps (sessions, checkpoints, store), drop its
 * locks, and log a last line with the exit code: non-zero when any step failed.
 */
function stopOnSignals(hub: Hub, locks: () => FileLock[], log: Logger): void {
  let stopping = false;
  const stop = async (sig: string) => {
    if (stopping) return log.warn({ signal: sig }, 'already stopping');
    stopping = true;
    log.info({ signal: sig }, 'shutting down');
    let failed: number;
    try {
      failed = await hub.close();
    } catch (e) {
      failed = 1;
      log.error({ cause: (e as Error).message }, 'stop: failed');
    }
    const held = locks();
    for (const l of held) l.release();
    log.info({ locks: held.length }, 'stop: locks released');
    const code = failed ? EXIT_RUNTIME : EXIT_OK;
    const line = failed ? `rephub stopped with ${failed} failed steps` : 'rephub stopped';
    (failed ? log.error.bind(log) : log.info.bind(log))({ exitCode: code, failed }, line);
    log.flush?.();
    process.exit(code);
  };
  process.on('SIGINT', () => void stop('SIGINT'));
  process.on('SIGTERM', () => void stop('SIGTERM'));
}

/**
 * Before anything opens LMDB or a recovery volume: this hub's exclusive locks on --data and on
 * each recovery volume (held until the process ends; a removed volume's is dropped by its reload),
 * then the operator API's admin token.
 */
function claimHubState(
  s: HubSettings,
  log: Logger,
): { locks: FileLock[]; volumeLocks: Map<string, FileLock>; adminToken: string } {
  // An RBD image is fenced by its exclusive lock, taken when it is opened (hub/rbd-target.ts).
  const files = s.volumes.filter((v) => !isRbdPath(v.path));
  const taken = lockHubState(
    s.dataDir,
    files.map((v) => v.path),
  );
  const [dataLock, ...rest] = taken;
  if (dataLock.kind === 'pidfile')
    log.warn(
      { lock: dataLock.path },
      'native addon missing: --data is locked with a pid file, which is weaker than flock',
    );
  const volumeLocks = new Map(files.map((v, i) => [v.name, rest[i]]));
  const t = hubToken(s.adminTokenFile, s.dataDir);
  if (t.created) log.info({ adminTokenFile: t.file }, 'created the admin token for operator actions (mode 0600)');
  else if (readableByOthers(t.file))
    log.warn({ adminTokenFile: t.file }, 'the admin token file is readable by other users: chmod 600 it');
  return { locks: [dataLock], volumeLocks, adminToken: t.token };
}
