// The daemons' checks of paths and key files before anything listens: each finding is one line
// naming the option (or config key and file, through the label the caller passes) and the path.
// Owns only the checks; `Problems` collects them so that `config check` reports every one and a
// start refuses on the first list.
import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { readPskFile } from '../security';

/** Findings of a check run, one line each; `run` turns a thrown error into a finding. */
export class Problems {
  readonly lines: string[] = [];
  /** At most this many findings are kept (a config file with thousands of bad volumes). */
  static readonly MAX = 100;

  add(line: string): void {
    if (this.lines.length < Problems.MAX) this.lines.push(line.split('\n')[0]);
  }

  /** `fn()`'s value, or undefined with its error added as a finding. */
  run<T>(fn: () => T): T | undefined {
    try {
      return fn();
    } catch (e) {
      this.add((e as Error).message);
      return undefined;
    }
  }

  get ok(): boolean {
    return this.lines.length === 0;
  }
}

const errText = (e: unknown): string => {
  const x = e as NodeJS.ErrnoException;
  return x.code ? `${x.code} (${x.message.replace(/^[A-Z]+: /, '').replace(/, \w+ '.*'$/, '')})` : x.message;
};

/**
 * A recovery volume file or block device: an existing one must be a regular file or a block
 * device this process can open read-write; a missing one needs a writable directory to be created
 * in (the hub creates it sparse when an agent first attaches).
 */
export function checkVolumePath(file: string, label: string): void {
  const abs = path.resolve(file);
  const st = fs.statSync(abs, { throwIfNoEntry: false });
  if (st) {
    if (st.isDirectory()) throw new Error(`${label}: ${abs} is a directory, not a file or block device`);
    if (!st.isFile() && !st.isBlockDevice()) throw new Error(`${label}: ${abs} is not a regular file or block device`);
    try {
      // open, not access(): root passes access(W_OK) on a read-only mount or an immutable file
      fs.closeSync(fs.openSync(abs, fs.constants.O_RDWR));
    } catch (e) {
      throw new Error(`${label}: ${abs} cannot be opened read-write: ${errText(e)}`, { cause: e });
    }
    return;
  }
  const dir = path.dirname(abs);
  const dst = fs.statSync(dir, { throwIfNoEntry: false });
  if (!dst) throw new Error(`${label}: cannot create ${abs}: directory ${dir} does not exist`);
  if (!dst.isDirectory()) throw new Error(`${label}: cannot create ${abs}: ${dir} is not a directory`);
  try {
    fs.accessSync(dir, fs.constants.W_OK | fs.constants.X_OK);
  } catch (e) {
    throw new Error(`${label}: cannot create ${abs}: directory ${dir} is not writable: ${errText(e)}`, { cause: e });
  }
}

/**
 * A state directory (the hub's --data, the agent's --state): created now when `create`, else
 * only checked to be creatable (config check changes nothing). Names the option and the path.
 */
export function checkStateDir(dir: string, label: string, create: boolean): string {
  const abs = path.resolve(dir);
  try {
    if (create) fs.mkdirSync(abs, { recursive: true });
    let p = abs;
    while (!fs.existsSync(p)) p = path.dirname(p); // the nearest existing ancestor
    if (!fs.statSync(p).isDirectory()) throw new Error(`${p} is not a directory`);
    fs.accessSync(p, fs.constants.W_OK | fs.constants.X_OK);
    if (create) fs.accessSync(abs, fs.constants.R_OK);
  } catch (e) {
    throw new Error(`${label}: state directory ${abs} is not usable: ${errText(e)}`, { cause: e });
  }
  return abs;
}

/** A file we only read (a key, a certificate, a token): exists, is a file, is readable. */
function readSmallFile(file: string, label: string): Buffer {
  try {
    const st = fs.statSync(file);
    if (!st.isFile()) throw new Error('not a regular file');
    if (st.size > 1 << 20) throw new Error('over 1 MiB');
    return fs.readFileSync(file);
  } catch (e) {
    throw new Error(`${label} ${path.resolve(file)}: ${errText(e)}`, { cause: e });
  }
}

export interface TlsFileLabels {
  tlsCert: string;
  tlsKey: string;
  tlsCa: string;
  pskFile: string;
}

/**
 * TLS files, each parsed on its own so that a bad one is named (OpenSSL's own
 * `DECODER routines::unsupported` says neither which file nor which flag), then the key against
 * the certificate.
 */
/** The TLS file flags as `label` names them (a flag, or a key of the config file). */
export function tlsFileLabels(label: (attr: string) => string): TlsFileLabels {
  return { tlsCert: label('tlsCert'), tlsKey: label('tlsKey'), tlsCa: label('tlsCa'), pskFile: label('pskFile') };
}

export function checkTlsFiles(
  f: { cert?: string; key?: string; ca?: string; pskFile?: string },
  label: TlsFileLabels,
  problems: Problems,
): void {
  const parse = <T>(file: string | undefined, lab: string, what: string, fn: (b: Buffer) => T): T | undefined =>
    file === undefined
      ? undefined
      : problems.run(() => {
          const b = readSmallFile(file, lab);
          try {
            return fn(b);
          } catch (e) {
            throw new Error(`${lab} ${path.resolve(file)}: not ${what}: ${(e as Error).message}`, { cause: e });
          }
        });
  const cert = parse(f.cert, label.tlsCert, 'a PEM certificate', (b) => new crypto.X509Certificate(b));
  const key = parse(f.key, label.tlsKey, 'a PEM private key', (b) => crypto.createPrivateKey(b));
  parse(f.ca, label.tlsCa, 'a PEM CA certificate', (b) => new crypto.X509Certificate(b));
  if (f.pskFile !== undefined)
    problems.run(() => {
      readSmallFile(f.pskFile!, label.pskFile);
      try {
        readPskFile(f.pskFile!);
      } catch (e) {
        throw new Error(`${label.pskFile} ${(e as Error).message}`, { cause: e });
      }
    });
  if (cert && key && !cert.checkPrivateKey(key))
    problems.add(`${label.tlsKey} ${path.resolve(f.key!)}: does not match the certificate ${path.resolve(f.cert!)}`);
}
