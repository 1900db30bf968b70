// The seed's `-repagent host[:port][,psk-file=F][,tls-cert=C,tls-key=K,tls-ca=A][,state=DIR]`
// value, parsed and checked as a pure function: every mistake is one error line that quotes it.
import { parseOpts } from './opts';

export const DEFAULT_HUB_PORT = 7000;

export interface RepagentConfig {
  host: string;
  port: number;
  pskFile?: string;
  tlsCert?: string;
  tlsKey?: string;
  tlsCa?: string;
  tlsServername?: string;
  /** Where the agent keeps its dirty logs (persistent: they make a restart a delta resync). */
  state?: string;
}

const KEYS = {
  'psk-file': 'pskFile',
  'tls-cert': 'tlsCert',
  'tls-key': 'tlsKey',
  'tls-ca': 'tlsCa',
  'tls-servername': 'tlsServername',
  state: 'state',
} as const;

export function parseRepagent(value: string): RepagentConfig {
  const fail = (why: string): never => {
    throw new Error(`-repagent "${value}": ${why}`);
  };
  const list = parseOpts(value);
  if (list.length === 0 || list[0][1] !== undefined)
    fail('expected the hub first: host[:port][,psk-file=F][,tls-cert=C,tls-key=K,tls-ca=A][,state=DIR]');
  const cfg: RepagentConfig = { ...parseHubAddress(list[0][0], fail) };
  const seen = new Set<string>();
  for (const [key, v] of list.slice(1)) {
    if (!(key in KEYS)) fail(`unknown key "${key}" (known: ${Object.keys(KEYS).join(', ')})`);
    if (seen.has(key)) fail(`"${key}" given twice`);
    seen.add(key);
    if (v === undefined || v === '') fail(`"${key}" needs a value (${key}=…)`);
    cfg[KEYS[key as keyof typeof KEYS]] = v;
  }
  const certs = [cfg.tlsCert, cfg.tlsKey, cfg.tlsCa].filter((x) => x !== undefined).length;
  if (certs > 0 && certs < 3) fail('tls-cert, tls-key and tls-ca go together');
  if (certs > 0 && cfg.pskFile) fail('use either psk-file or tls-cert/tls-key/tls-ca, not both');
  if (cfg.tlsServername && certs === 0) fail('tls-servername needs tls-cert, tls-key and tls-ca');
  return cfg;
}

/** `host`, `host:port`, `[v6]` or `[v6]:port`. */
function parseHubAddress(a: string, fail: (why: string) => never): { host: string; port: number } {
  const m = /^(?:\[([0-9A-Fa-f:.]+)\]|([^:[\]\s/]+))(?::(\d{1,5}))?$/.exec(a);
  if (!m) return fail(`"${a}" is not host[:port] (an IPv6 address in brackets: [::1]:7000)`);
  const port = m[3] === undefined ? DEFAULT_HUB_PORT : Number(m[3]);
  if (port < 1 || port > 65535) fail(`port ${m[3]} is out of range (1-65535)`);
  return { host: m[1] ?? m[2], port };
}
