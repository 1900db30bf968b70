// Volume identities, as DRBD's generation identifiers: what a file is (its fingerprint: device,
// inode, size, mtime and ctime in ns) and which history a volume's data belongs to (a lineage of
// random 16-byte UUIDs, newest first). The agent's dirty log keeps the protected volume's lineage
// and the image's fingerprint; the hub's record keeps the lineage it follows and the recovery
// file's fingerprint. Pure comparisons here, so both sides say the same thing the same way.
import * as fs from 'node:fs';
import { randomBytes } from 'node:crypto';

export const UUID_BYTES = 16;
export const MAX_LINEAGE = 4; // current + 3 ancestors: restarts without the hub before a resync is forced

/** A file's identity: bigint fields, as fs.statSync(path, { bigint: true }) gives them. */
export interface Fingerprint {
  dev: bigint;
  ino: bigint;
  size: bigint;
  mtimeNs: bigint;
  ctimeNs: bigint;
}

/** The fingerprint of `path` now; null if it does not exist. */
export function fingerprintOf(path: string): Fingerprint | null {
  let st: fs.BigIntStats;
  try {
    st = fs.statSync(path, { bigint: true });
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return null;
    throw e;
  }
  // A block device: its node's inode and times change with every boot (devtmpfs) and say nothing of
  // the data; the device number is what names it. Writes behind our back are not visible here.
  if (st.isBlockDevice()) return { dev: 0n, ino: st.rdev, size: 0n, mtimeNs: 0n, ctimeNs: 0n };
  return { dev: st.dev, ino: st.ino, size: st.size, mtimeNs: st.mtimeNs, ctimeNs: st.ctimeNs };
}

export function newUuid(): Buffer {
  return randomBytes(UUID_BYTES);
}

/** Same file: device and inode. */
export function sameFile(a: Fingerprint, b: Fingerprint): boolean {
  return a.dev === b.dev && a.ino === b.ino;
}

/**
 * What changed between `was` (saved at a close) and `now`, in words, or null. `clean`: `was` was
 * saved after the last write (a clean close); then size, mtime and ctime must match too (a
 * truncate to 0 and re-extend moves ctime). After an unclean end our own last writes moved
 * them too, so only a different inode can be told apart.
 */
export function fileChange(was: Fingerprint, now: Fingerprint, clean: boolean): string | null {
  if (!sameFile(was, now))
    return `a different file (device ${was.dev} inode ${was.ino} -> device ${now.dev} inode ${now.ino})`;
  if (!clean) return null;
  const diffs: string[] = [];
  if (was.size !== now.size) diffs.push(`size ${was.size} -> ${now.size}`);
  if (was.mtimeNs !== now.mtimeNs) diffs.push(`mtime ${nsIso(was.mtimeNs)} -> ${nsIso(now.mtimeNs)}`);
  if (was.ctimeNs !== now.ctimeNs) diffs.push(`ctime ${nsIso(was.ctimeNs)} -> ${nsIso(now.ctimeNs)}`);
  return diffs.length === 0 ? null : `changed while nothing watched it (${diffs.join(', ')})`;
}

function nsIso(ns: bigint): string {
  return new Date(Number(ns / 1_000_000n)).toISOString();
}

/** The next lineage: a new current UUID; the ancestors kept unless the history was broken. */
export function nextLineage(prev: readonly Buffer[], keepHistory: boolean): Buffer[] {
  return keepHistory ? [newUuid(), ...prev].slice(0, MAX_LINEAGE) : [newUuid()];
}

/** A stored fingerprint as JSON-safe strings (LMDB records), and back. */
export interface StoredFingerprint {
  dev: string;
  ino: string;
  size: string;
  mtimeNs: string;
  ctimeNs: string;
}
export function storeFingerprint(f: Fingerprint): StoredFingerprint {
  return { dev: `${f.dev}`, ino: `${f.ino}`, size: `${f.size}`, mtimeNs: `${f.mtimeNs}`, ctimeNs: `${f.ctimeNs}` };
}
export function loadFingerprint(s: StoredFingerprint): Fingerprint {
  return {
    dev: BigInt(s.dev),
    ino: BigInt(s.ino),
    size: BigInt(s.size),
    mtimeNs: BigInt(s.mtimeNs),
    ctimeNs: BigInt(s.ctimeNs),
  };
}

/** Header fields the dirty log keeps for identity (bytes 20.. of its 4 KiB header). */
export interface LogIdentity {
  clean: boolean; // the log was closed cleanly after the image's last write: `image` is exact
  lineage: Buffer[];
  image: Fingerprint;
}

const ID_VERSION = 1;
const OFF = { version: 20, flags: 24, count: 28, uuids: 32, fp: 32 + UUID_BYTES * MAX_LINEAGE };
export const LOG_IDENTITY_END = OFF.fp + 40;

/** Read the identity from a dirty-log header; null for a log written before identities (zeroes). */
export function readLogIdentity(h: Buffer): LogIdentity | null {
  if (h.length < LOG_IDENTITY_END || h.readUInt32LE(OFF.version) !== ID_VERSION) return null;
  const n = h.readUInt32LE(OFF.count);
  if (n < 1 || n > MAX_LINEAGE) return null;
  const lineage: Buffer[] = [];
  for (let i = 0; i < n; i++)
    lineage.push(Buffer.from(h.subarray(OFF.uuids + i * UUID_BYTES, OFF.uuids + (i + 1) * UUID_BYTES)));
  const f = (k: number) => h.readBigUInt64LE(OFF.fp + 8 * k);
  const image = { dev: f(0), ino: f(1), size: f(2), mtimeNs: f(3), ctimeNs: f(4) };
  return { clean: (h.readUInt32LE(OFF.flags) & 1) !== 0, lineage, image };
}

/** Write `id` into header `h` (the first LOG_IDENTITY_END bytes are this module's from byte 20). */
export function writeLogIdentity(h: Buffer, id: LogIdentity): void {
  h.fill(0, OFF.version, LOG_IDENTITY_END);
  h.writeUInt32LE(ID_VERSION, OFF.version);
  h.writeUInt32LE(id.clean ? 1 : 0, OFF.flags);
  h.writeUInt32LE(id.lineage.length, OFF.count);
  id.lineage.forEach((u, i) => u.copy(h, OFF.uuids + i * UUID_BYTES));
  const f = id.image;
  [f.dev, f.ino, f.size, f.mtimeNs, f.ctimeNs].forEach((v, k) => h.writeBigUInt64LE(v, OFF.fp + 8 * k));
}

/**
 * The agent's decision at open: the lineage this run writes under, and what changed (null: the
 * same image, its history continues). `fresh`: the log holds no history (new, or unreadable).
 */
export function openImage(
  prev: LogIdentity | null,
  fresh: boolean,
  now: Fingerprint,
): { lineage: Buffer[]; change: string | null } {
  if (fresh || prev === null) return { lineage: nextLineage([], false), change: null };
  const change = fileChange(prev.image, now, prev.clean);
  return { lineage: nextLineage(prev.lineage, change === null), change };
}
