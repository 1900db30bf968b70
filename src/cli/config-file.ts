// The daemons' --config FILE (TOML): keys are the long flags without their dashes (`region-size`,
// `tls-key`; `journal = false` for --no-journal), repeated flags take an array (`vol = [...]`).
// Owns reading the file, checking its keys against the command's own options, and filling in
// every option the command line left at its default. Flags always win over the file: an
// option whose value came from the command line is never touched. Because the keys are looked
// up among the command's options, a flag added to a daemon is a config key with no change here.
import * as fs from 'node:fs';
import * as path from 'node:path';
import { parse as parseToml } from 'smol-toml';
import type { Command, Option } from 'commander';

/** A config file, as read: its absolute path and its keys. */
export interface ConfigFile {
  file: string;
  values: Record<string, unknown>;
}

/** Limit on a config file's size: a daemon's options fit in far less. */
const MAX_CONFIG_BYTES = 1 << 20;

/** Reads and parses `file`; a missing, oversized or malformed file throws one line naming it. */
export function readConfigFile(file: string): ConfigFile {
  const abs = path.resolve(file);
  let text: string;
  try {
    const st = fs.statSync(abs);
    if (st.isDirectory()) throw new Error('is a directory');
    if (st.size > MAX_CONFIG_BYTES) throw new Error(`over ${MAX_CONFIG_BYTES} bytes`);
    text = fs.readFileSync(abs, 'utf8');
  } catch (e) {
    throw new Error(`--config ${abs}: ${(e as Error).message}`, { cause: e });
  }
  try {
    return { file: abs, values: parseToml(text) as Record<string, unknown> };
  } catch (e) {
    // smol-toml's message spans lines (it quotes the source): keep its first line and position
    const first = (e as Error).message.split('\n')[0];
    const where = (e as { line?: number }).line;
    throw new Error(`--config ${abs}${where ? `:${where}` : ''}: not valid TOML: ${first}`, { cause: e });
  }
}

/** The config key of an option: its long flag without dashes, and without `no-` for a negation. */
export function keyOf(o: Option): string {
  const long = (o.long ?? '').replace(/^--/, '');
  return o.negate ? long.replace(/^no-/, '') : long;
}

/** Keys a config file may not set: the file itself, and one-shot modes. */
const NOT_IN_FILE = new Set(['config', 'check', 'help', 'version']);

/**
 * Sets, from `cfg`, every option of `cmd` that the command line did not give. Returns one line
 * per problem (unknown key, wrong type), each naming the key and the file; nothing is set from
 * a key with a problem.
 */
export function applyConfig(cmd: Command, cfg: ConfigFile): string[] {
  const problems: string[] = [];
  const byKey = new Map<string, Option>();
  for (const o of cmd.options) if (o.long) byKey.set(keyOf(o), o);
  for (const [key, raw] of Object.entries(cfg.values)) {
    const o = byKey.get(key);
    const at = `${key} in ${cfg.file}`;
    if (!o || NOT_IN_FILE.has(key)) {
      const hint = byKey.has(key.replace(/_/g, '-')) ? ` (did you mean ${key.replace(/_/g, '-')}?)` : '';
      problems.push(`${at}: unknown key${hint}`);
      continue;
    }
    const value = convert(o, raw);
    if (value instanceof TypeMismatch) {
      problems.push(`${at}: ${value.message}`);
      continue;
    }
    const attr = o.attributeName();
    const source = cmd.getOptionValueSource(attr);
    if (source === 'cli' || source === 'env') continue; // the flag wins
    cmd.setOptionValueWithSource(attr, value, 'config');
  }
  return problems;
}

class TypeMismatch {
  constructor(readonly message: string) {}
}

/** The option's value from a TOML value, or a TypeMismatch saying what was expected. */
function convert(o: Option, raw: unknown): unknown {
  const scalar = (v: unknown): string | null =>
    typeof v === 'string' ? v : typeof v === 'number' && Number.isFinite(v) ? String(v) : null;
  if (!o.required && !o.optional) {
    // a switch: --log-pretty, or a negation like --no-journal (key `journal`)
    return typeof raw === 'boolean' ? raw : new TypeMismatch('expected true or false');
  }
  if (Array.isArray(o.defaultValue)) {
    // a repeatable flag (--vol, --export): an array, or one value
    const list = Array.isArray(raw) ? raw : [raw];
    const out = list.map(scalar);
    if (out.some((v) => v === null)) return new TypeMismatch('expected a string or an array of strings');
    return out as string[];
  }
  return scalar(raw) ?? new TypeMismatch('expected a string or a number');
}

/**
 * How an error names an option: `--region-size` when the command line gave it (or it was left
 * at its default), `region-size in /etc/rephub/hub.toml` when the config file did.
 */
export function optionLabel(cmd: Command, cfg: ConfigFile | undefined, attr: string): string {
  const o = cmd.options.find((x) => x.attributeName() === attr);
  const key = o ? keyOf(o) : attr;
  if (cfg && cmd.getOptionValueSource(attr) === 'config') return `${key} in ${cfg.file}`;
  return o?.long && !o.negate ? o.long : `--${key}`;
}

/** `fn()`, its error's leading `flag` replaced by `label` (a parser that names only the flag). */
export function relabel<T>(flag: string, label: string, fn: () => T): T {
  try {
    return fn();
  } catch (e) {
    const m = (e as Error).message;
    throw new Error(m.startsWith(flag) ? label + m.slice(flag.length) : `${label}: ${m}`, { cause: e });
  }
}
