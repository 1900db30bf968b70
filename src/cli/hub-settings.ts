// The hub's settings from its options (command line over --config file over defaults), every one
// checked before anything listens: addresses, sizes, each --vol path, --data, the TLS files, the
// admin token file. Owns the resolution only; each finding is one line naming the flag, or the
// config key and its file. `rephub config check` runs the same code without creating anything.
import * as path from 'node:path';
import type { Command } from 'commander';
import { parseHostPort, parseVolSpec, parseSize, parseMillis, parseDuration, parseRegionSize } from './args';
import { isRbdPath } from '../hub/rbd-target';
import { parseRbdSpec } from '../../storage/rbd-volume';
import { rbdUnavailable } from '../../native/rbd';
import { journalConfig, JournalFlags } from './journal-command';
import type { JournalConfig } from '../hub/journal';
import type { TlsFiles } from '../security';
import { serverOptions, enabled as tlsEnabled } from '../security';
import { readTokenFile } from './admin-token';
import { ConfigFile, optionLabel } from './config-file';
import { Problems, checkStateDir, checkTlsFiles, checkVolumePath, tlsFileLabels } from './startup-checks';

/** The serve command's options as commander gives them (strings; the config file fills them in too). */
import { hubResyncLimit } from './bandwidth-flags';
import type { ResyncRateLimit } from '../hub/resync-rate';

export type HubFlags = JournalFlags & {
  config?: string;
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
  verifyRate: string;
  verifyEvery: string;
  maxResyncRate: string;
};

export type VolSpec = { name: string; path: string; vm?: string };

/** What the hub runs with, every value checked. */
export interface HubSettings {
  listen: { host: string; port: number };
  http: { host: string; port: number };
  nbd: { host: string; port: number };
  volumes: VolSpec[];
  dataDir: string;
  regionSize: number;
  commitIntervalMs: number;
  cache: 'writeback' | 'none';
  tls: TlsFiles;
  nbdTls: boolean;
  adminTokenFile?: string;
  verify: { rateBytesPerSecond: number; everyMs: number };
  resyncRate?: ResyncRateLimit;
  journal?: JournalConfig;
}

/** The default --data: systemd's $STATE_DIRECTORY (its first entry) when set, else ./rephub-data. */
export function defaultDataDir(): string {
  const sd = process.env.STATE_DIRECTORY?.split(':')[0];
  return sd || './rephub-data';
}

/**
 * Resolves and checks the hub's settings. `create`: make --data now (at start); false for
 * `config check`, which only checks that it could. Returns every finding, and the settings when
 * there were none.
 */
export function resolveHubSettings(
  cmd: Command,
  cfg: ConfigFile | undefined,
  o: HubFlags,
  create: boolean,
): { settings?: HubSettings; problems: Problems } {
  const p = new Problems();
  const label = (attr: string) => optionLabel(cmd, cfg, attr);
  const addr = (attr: 'listen' | 'http' | 'nbd') => p.run(() => parseHostPort(o[attr], label(attr)));
  const listen = addr('listen'),
    http = addr('http'),
    nbd = addr('nbd');
  const regionSize = p.run(() => parseRegionSize(o.regionSize, label('regionSize')));
  const commitIntervalMs = p.run(() => parseMillis(o.commitInterval, label('commitInterval'), 1000));
  if (o.cache !== 'writeback' && o.cache !== 'none') p.add(`${label('cache')} ${o.cache}: writeback or none`);
  const volumes = checkVolumes(o.vol, label('vol'), p);
  const dataDir = p.run(() => checkStateDir(o.data, label('data'), create));
  const tls = { cert: o.tlsCert, key: o.tlsKey, ca: o.tlsCa, pskFile: o.pskFile };
  checkTlsFiles(tls, tlsFileLabels(label), p);
  if (p.ok && tlsEnabled(tls)) p.run(() => serverOptions(tls)); // combinations: cert+key+ca, or psk alone
  if (o.nbdTls && (!o.tlsCert || !o.tlsKey))
    p.add(`${label('nbdTls')}: NBD TLS needs the hub certificate (--tls-cert and --tls-key)`);
  if (o.adminTokenFile) p.run(() => readTokenFile(o.adminTokenFile!)); // names the file; the default is made at start
  const verify = p.run(() => ({
    rateBytesPerSecond: parseSize(o.verifyRate, label('verifyRate')),
    everyMs: parseDuration(o.verifyEvery, label('verifyEvery')),
  }));
  const journal = p.run(() => journalConfig(o, dataDir ?? o.data));
  const resyncRate = p.run(() => hubResyncLimit(o.maxResyncRate, label('maxResyncRate')));
  if (!p.ok) return { problems: p };
  return {
    problems: p,
    settings: {
      listen: listen!,
      http: http!,
      nbd: nbd!,
      volumes: volumes!,
      dataDir: dataDir!,
      regionSize: regionSize!,
      commitIntervalMs: commitIntervalMs!,
      cache: o.cache as 'writeback' | 'none',
      tls,
      nbdTls: !!o.nbdTls,
      adminTokenFile: o.adminTokenFile && path.resolve(o.adminTokenFile),
      verify: verify!,
      resyncRate,
      journal,
    },
  };
}

/**
 * Each --vol: well formed, named once, its file usable (or creatable); `rbd:` ones only well
 * formed (the cluster is reached when an agent attaches) and librbd loadable.
 */
export function checkVolumes(specs: string[], label: string, p: Problems): VolSpec[] | undefined {
  if (specs.length === 0) {
    p.add(`${label}: give at least one recovery volume (e.g. --vol V1R)`);
    return undefined;
  }
  const out: VolSpec[] = [];
  for (const s of specs) {
    const named =
      <T>(fn: () => T) =>
      () => {
        try {
          return fn();
        } catch (e) {
          throw new Error(`${label} ${s}: ${(e as Error).message}`, { cause: e });
        }
      };
    const v = p.run(named(() => parseVolSpec(s)));
    if (!v) continue;
    if (out.some((x) => x.name === v.name)) p.add(`${label} ${s}: volume ${v.name} is named twice`);
    else if (isRbdPath(v.path)) {
      p.run(named(() => parseRbdSpec(v.path)));
      const why = rbdUnavailable();
      if (why) p.add(`${label} ${s}: ${why}`);
    } else p.run(() => checkVolumePath(v.path, `${label} ${s}`));
    out.push(v);
  }
  return p.ok ? out : undefined;
}
