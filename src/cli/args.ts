// Validation of command-line values shared by the CLIs. Errors name the option and the value.
import * as path from 'node:path';
import { nativeUnavailable } from '../../storage/fileio';
import type { Logger } from '../log';

export const NAME_RE = /^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$/;

export function parseHostPort(v: string, opt: string): { host: string; port: number } {
  const m = /^(\[[0-9a-fA-F:.]+\]|[^:\s]+):(\d{1,5})$/.exec(v);
  const port = m ? Number(m[2]) : NaN;
  if (!m || port > 65535) throw new Error(`${opt}: expected HOST:PORT, got "${v}"`);
  return { host: m[1].replace(/^\[|\]$/g, ''), port };
}

/** `--hub h1:7000,h2:7000`: one or more hub addresses (at most 16), none twice. */
export function parseHubList(v: string): { host: string; port: number }[] {
  const hubs = v.split(',').map((h) => parseHostPort(h.trim(), '--hub'));
  if (hubs.length > 16) throw new Error(`--hub: at most 16 hubs, got ${hubs.length}`);
  const seen = new Set(hubs.map((h) => `${h.host}:${h.port}`));
  if (seen.size !== hubs.length) throw new Error(`--hub "${v}": a hub is named twice`);
  return hubs;
}

export function checkName(name: string, what: string): string {
  if (!NAME_RE.test(name))
    throw new Error(`${what} "${name}": use 1-128 characters of A-Z a-z 0-9 . _ - (starting with a letter or digit)`);
  return name;
}

export function checkPath(p: string, what: string): string {
  // eslint-disable-next-line no-control-regex
  if (p.length === 0 || /[\x00-\x1f\x7f]/.test(p))
    throw new Error(`${what} "${p}": empty or contains control characters`);
  return p;
}

/**
 * `V1R` (the file V1R protects agent volume V1) or `V1=/path/to/V1R.img`, optionally bound to
 * the one VM allowed to protect it: `V1R@web1`.
 */
export function parseVolSpec(spec: string): { name: string; path: string; vm?: string } {
  const at = spec.lastIndexOf('@');
  if (at > 0) return { ...parseVolSpec(spec.slice(0, at)), vm: checkName(spec.slice(at + 1), '--vol VM binding') };
  const eq = spec.indexOf('=');
  if (eq >= 0)
    return { name: checkName(spec.slice(0, eq), '--vol name'), path: checkPath(spec.slice(eq + 1), '--vol path') };
  checkPath(spec, '--vol');
  const base = path.basename(spec).replace(/\.(img|raw|bin)$/i, '');
  const name = base.length > 1 && base.endsWith('R') ? base.slice(0, -1) : base;
  return { name: checkName(name, '--vol (derived name)'), path: spec };
}

export function parseSize(v: string, opt: string): number {
  const m = /^(\d+)([KMGT]?)(i?B)?$/i.exec(v.trim());
  if (!m) throw new Error(`${opt}: expected a size like 65536, 64K or 1M, got "${v}"`);
  const mul = { '': 1, K: 1 << 10, M: 1 << 20, G: 1 << 30, T: 2 ** 40 }[
    m[2].toUpperCase() as '' | 'K' | 'M' | 'G' | 'T'
  ];
  return Number(m[1]) * mul;
}

/** A dirty-bitmap region size: a power of two, 4K..1M. */
export function parseRegionSize(v: string, opt: string): number {
  const n = parseSize(v, opt);
  if (n < 4096 || n > 1 << 20 || (n & (n - 1)) !== 0)
    throw new Error(`${opt} ${v}: a power of two from 4K to 1M (4096..1048576 bytes)`);
  return n;
}

/** Replace {V1} style placeholders with the export URIs; unknown placeholders are an error. */
export function fillLaunch(cmd: string, uris: Record<string, string>): string {
  return cmd.replace(/\{([A-Za-z0-9._-]+)\}/g, (_, n) => {
    if (!(n in uris))
      throw new Error(
        `--launch uses {${n}} but the test exports only ${Object.keys(uris)
          .map((k) => `{${k}}`)
          .join(', ')}`,
      );
    return uris[n];
  });
}

/** A whole number of milliseconds, 0 to `max`. */
export function parseMillis(v: string, flag: string, max: number): number {
  const ms = Number(v);
  if (!Number.isInteger(ms) || ms < 0 || ms > max) throw new Error(`${flag} ${v}: milliseconds, 0 to ${max}`);
  return ms;
}

/** The agent's --max-lag: whole milliseconds, 0 (off) to a minute; `500ms` and `1s` are taken too. */
export function parseMaxLag(v: string, flag: string): number {
  const m = /^(\d+)(ms|s)?$/.exec(v.trim());
  const ms = m ? Number(m[1]) * (m[2] === 's' ? 1000 : 1) : NaN;
  if (!Number.isInteger(ms) || ms > 60_000)
    throw new Error(`${flag} ${v}: milliseconds (500, 500ms or 1s), 0 (off) to 60000`);
  return ms;
}

/** Both commands say once, at start, when they run without the native addon. */
export function warnIfNoNative(log: Logger): void {
  const why = nativeUnavailable();
  if (!why) return;
  const lost = 'page-cache advice, hole detection and fast frame checksums are off (slower, still correct)';
  log.warn({ cause: why }, `native addon missing: ${lost}`);
}

/** A duration like 30s, 10m, 6h or 1d (a bare number is seconds), in milliseconds; `off` or 0 is 0. */
export function parseDuration(v: string, opt: string): number {
  if (v === 'off') return 0;
  const m = /^(\d+)(ms|s|m|h|d)?$/.exec(v.trim());
  if (!m) throw new Error(`${opt}: expected a duration like 30s, 10m, 6h or 1d (or off), got "${v}"`);
  const mul = { ms: 1, s: 1000, m: 60_000, h: 3_600_000, d: 86_400_000 }[(m[2] ?? 's') as 'ms' | 's' | 'm' | 'h' | 'd'];
  const ms = Number(m[1]) * mul;
  if (ms !== 0 && ms < 1000) throw new Error(`${opt} ${v}: at least 1s`);
  if (ms > 2 ** 31 - 1) throw new Error(`${opt} ${v}: at most 24d`);
  return ms;
}
