// Small shared test utilities: temporary directories, file hashes, sparse random images, polling.
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { createHash, randomBytes } from 'node:crypto';

export const MiB = 1 << 20;

export const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

export function tmpdir(prefix = 'rephub-test-'): string {
  return fs.mkdtempSync(path.join(os.tmpdir(), prefix));
}

export function sha(file: string, size?: number): string {
  const h = createHash('sha256');
  const fd = fs.openSync(file, 'r');
  const buf = Buffer.alloc(1 << 20);
  let off = 0;
  const total = size ?? fs.fstatSync(fd).size;
  while (off < total) {
    const n = fs.readSync(fd, buf, 0, Math.min(buf.length, total - off), off);
    if (n === 0) {
      h.update(Buffer.alloc(total - off));
      break;
    }
    h.update(buf.subarray(0, n));
    off += n;
  }
  fs.closeSync(fd);
  return h.digest('hex');
}

/** A file of `mib` MiB with random data in some 64 KiB blocks and holes elsewhere. */
export function makeImage(file: string, bytes: number, fillRatio = 0.5, seed?: Buffer): void {
  const fd = fs.openSync(file, 'w');
  fs.ftruncateSync(fd, bytes);
  const blk = 64 * 1024;
  for (let off = 0; off < bytes; off += blk) {
    if (Math.random() < fillRatio)
      fs.writeSync(fd, seed ?? randomBytes(Math.min(blk, bytes - off)), 0, Math.min(blk, bytes - off), off);
  }
  fs.closeSync(fd);
}

export async function waitFor<T>(what: string, fn: () => T | Promise<T>, timeoutMs = 30000, everyMs = 20): Promise<T> {
  const until = Date.now() + timeoutMs;
  let last: unknown;
  for (;;) {
    try {
      const v = await fn();
      if (v) return v;
    } catch (e) {
      last = e;
    }
    if (Date.now() > until)
      throw new Error(`timed out waiting for ${what}${last ? `: ${(last as Error).message}` : ''}`);
    await new Promise((r) => setTimeout(r, everyMs));
  }
}

/** `len` bytes of `file` at `off`, read straight from the file (a replica, an image, a view). */
export function readRegion(file: string, off: number, len: number): Buffer {
  const b = Buffer.alloc(len);
  const fd = fs.openSync(file, 'r');
  fs.readSync(fd, b, 0, len, off);
  fs.closeSync(fd);
  return b;
}

/**
 * `body`, failed with where it stands (`where()`) once `where()` has not changed for `ms`: a hang
 * fails with its place instead of the runner's bare timeout. Not a timing assertion: a slow run
 * that moves on is never failed, and `ms` sits far above any one step's normal run time.
 */
export async function failIfStuck<T>(ms: number, where: () => string, body: Promise<T>): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  let last = where();
  const stuck = new Promise<never>((_, rej) => {
    timer = setInterval(() => {
      const now = where();
      if (now === last) rej(new Error(`no progress for ${ms} ms: stuck at ${now}`));
      last = now;
    }, ms);
  });
  try {
    return await Promise.race([body, stuck]);
  } finally {
    clearInterval(timer);
  }
}
