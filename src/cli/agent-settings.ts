// The agent's options (command line over --config file over defaults), every one checked before
// anything listens or opens a dirty log: addresses, sizes, each --export image, --state, the TLS
// files. Each finding is one line naming the flag, or the config key and its file. `rephub-agent
// config check FILE` (or --config FILE --check) runs the same checks and creates nothing.
import * as fs from 'node:fs';
import * as path from 'node:path';
import type { Command } from 'commander';
import { checkName, checkPath, parseHubList, parseRegionSize, parseSize, parseMillis, parseMaxLag } from './args';
import { parseListenAddr } from './listen-addr';
import { AgentBandwidthFlags, agentBandwidth, parsePercent, parseRate } from './bandwidth-flags';
import { checkLogLevel, Logger } from '../log';
import { clientOptions, enabled as tlsEnabled } from '../security';
import { ConfigFile, applyConfig, optionLabel, readConfigFile, relabel } from './config-file';
import { Problems, checkStateDir, checkTlsFiles, tlsFileLabels } from './startup-checks';

/** The default --state: systemd's $STATE_DIRECTORY (its first entry) when set, else ./rephub-agent-state. */
export function defaultStateDir(): string {
  return process.env.STATE_DIRECTORY?.split(':')[0] || './rephub-agent-state';
}

/** Reads --config into `cmd` (options from an earlier read reset first): its problems, and the file. */
export function loadAgentConfig(cmd: Command): { cfg?: ConfigFile; problems: Problems } {
  const p = new Problems();
  for (const o of cmd.options) {
    const attr = o.attributeName();
    if (cmd.getOptionValueSource(attr) === 'config') cmd.setOptionValueWithSource(attr, o.defaultValue, 'default');
  }
  const file = cmd.opts().config as string | undefined;
  const cfg = file ? p.run(() => readConfigFile(file)) : undefined;
  if (cfg) for (const line of applyConfig(cmd, cfg)) p.add(line);
  return { cfg, problems: p };
}

/** One --export NAME=PATH: the name, and an image this process can open read-write, of 512-byte sectors. */
function checkExport(spec: string, label: string): { name: string; path: string } {
  const eq = spec.indexOf('=');
  if (eq <= 0) throw new Error(`${label}: expected NAME=PATH, got "${spec}"`);
  const name = checkName(spec.slice(0, eq), `${label} name`);
  const file = path.resolve(checkPath(spec.slice(eq + 1), `${label} path`));
  const at = `${label} ${spec}`;
  const st = fs.statSync(file, { throwIfNoEntry: false });
  if (!st) throw new Error(`${at}: ${file} does not exist (the agent serves existing images)`);
  if (!st.isFile() && !st.isBlockDevice()) throw new Error(`${at}: ${file} is not a regular file or block device`);
  try {
    fs.closeSync(fs.openSync(file, fs.constants.O_RDWR));
  } catch (e) {
    throw new Error(`${at}: ${file} cannot be opened read-write: ${(e as Error).message}`, { cause: e });
  }
  if (st.isFile() && (st.size === 0 || st.size % 512 !== 0))
    throw new Error(`${at}: ${file} is ${st.size} bytes, not a positive multiple of 512`);
  return { name, path: file };
}

/** Every check of the agent's options, into `p`; `create`: make --state now. */
export function checkAgentOptions(cmd: Command, cfg: ConfigFile | undefined, p: Problems, create: boolean): void {
  const o = cmd.opts();
  const label = (attr: string) => optionLabel(cmd, cfg, attr);
  const level = checkLogLevel(o.logLevel, label('logLevel'));
  if (level) p.add(level);
  const hubs = p.run(() => relabel('--hub', label('hub'), () => parseHubList(o.hub)));
  p.run(() => parseListenAddr(o.nbd, label('nbd')));
  if (o.http !== 'off') p.run(() => parseListenAddr(o.http, label('http')));
  const vm = p.run(() => checkName(o.vm, label('vm')));
  p.run(() => parseRegionSize(o.regionSize, label('regionSize')));
  p.run(() => parseSize(o.maxQueue, label('maxQueue')));
  p.run(() => parseMillis(o.flushMarkerGap, label('flushMarkerGap'), 60_000));
  p.run(() => parseMaxLag(o.maxLag, label('maxLag')));
  p.run(() => parseMillis(o.loopFlushMax, label('loopFlushMax'), 1000));
  const rates = [
    p.run(() => parseRate(o.maxRate, label('maxRate'))),
    p.run(() => parsePercent(o.resyncShare, label('resyncShare'))),
    p.run(() => parseRate(o.maxResyncRate, label('maxResyncRate'))),
  ];
  if (rates.every((r) => r !== undefined)) p.run(() => agentBandwidth(o as AgentBandwidthFlags)); // the combination
  const exports = o.export as string[];
  if (exports.length === 0)
    p.add(`${label('export')}: give at least one NAME=PATH (e.g. --export V1=/var/lib/vm/V1.img)`);
  const names = new Set<string>();
  for (const spec of exports) {
    const v = p.run(() => checkExport(spec, label('export')));
    if (v && names.has(v.name)) p.add(`${label('export')} ${spec}: volume ${v.name} is named twice`);
    if (v) names.add(v.name);
  }
  p.run(() => checkStateDir(o.state, label('state'), create));
  const files = { cert: o.tlsCert, key: o.tlsKey, ca: o.tlsCa, pskFile: o.pskFile };
  checkTlsFiles(files, tlsFileLabels(label), p);
  if (p.ok && vm && hubs && tlsEnabled(files)) p.run(() => clientOptions(files, vm, hubs[0].host));
}

/** `rephub-agent config check FILE` or `--config FILE --check`: problems on stdout; 0 when none, else 2. */
export function agentConfigCheck(cmd: Command): number {
  const { cfg, problems } = loadAgentConfig(cmd);
  if (cfg || !cmd.opts().config) checkAgentOptions(cmd, cfg, problems, false);
  for (const line of problems.lines) process.stdout.write(line + '\n');
  if (problems.ok) process.stdout.write(`${cfg?.file ?? 'options'}: OK\n`);
  return problems.ok ? 0 : 2;
}

/**
 * SIGHUP on the agent: the config file read again; log-level applies at once, any other changed
 * option (exports added or removed too) is logged as needing a restart. A file with problems
 * changes nothing. Never ends the agent.
 */
export function reloadAgentConfig(cmd: Command, log: Logger): void {
  const before = { ...cmd.opts() };
  const { cfg, problems } = loadAgentConfig(cmd);
  if (!cfg) return void log.warn({ signal: 'SIGHUP' }, 'SIGHUP: no --config file to reload; ignored');
  if (problems.ok) checkAgentOptions(cmd, cfg, problems, false);
  if (!problems.ok) {
    for (const line of problems.lines) log.error({ problem: line }, `config reload: ${line}`);
    log.error({ config: cfg.file, problems: problems.lines.length }, 'config reload refused: nothing changed');
    return;
  }
  const after = cmd.opts();
  let changed = 0;
  for (const key of new Set([...Object.keys(before), ...Object.keys(after)])) {
    if (JSON.stringify(before[key]) === JSON.stringify(after[key])) continue;
    if (key === 'logLevel') {
      const level = (after.logLevel as string | undefined) ?? process.env.LOG_LEVEL ?? 'info';
      log.info({ from: log.level, to: level }, 'config reload: log-level applied');
      log.level = level;
      continue;
    }
    changed++;
    log.warn({ key, from: before[key], to: after[key] }, 'config reload: changed; needs a restart');
  }
  log.info({ config: cfg.file, needRestart: changed }, 'config reloaded');
}
