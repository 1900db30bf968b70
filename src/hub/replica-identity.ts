// What a recovery volume's record says about identity, and the comparisons the replica makes
// with it (SPEC.md 5.16, as DRBD's generation identifiers): the protected volume's lineage the
// record follows (`peerUuid`), and the recovery file's fingerprint (`recoveryFile`), exact only
// when saved at a clean hub stop. Each comparison answers a reason in words, or null.
import type { ChecksumResyncRecord, VolumeRecord } from '../../storage/state';
import { fileChange, fingerprintOf, loadFingerprint, storeFingerprint } from '../../storage/volume-identity';
import { isRbdPath } from './rbd-target';

/**
 * The agent presents `lineage` (current UUID first): the record's data follows it if the UUID
 * it last followed is in it (the same run, or runs since that kept the image's history and the
 * dirty log). Otherwise the image is another one, or changed, or a clone's: the reason.
 */
export function peerChange(rec: VolumeRecord, lineage: Buffer[] | null): string | null {
  // A record from before identities, or an agent without the capability: nothing to compare.
  if (!lineage || !rec.peerUuid) return null;
  if (lineage.some((u) => u.toString('hex') === rec.peerUuid)) return null;
  return (
    `protected volume identity changed: the replica follows ${rec.peerUuid}, the agent's volume is ` +
    `${lineage[0].toString('hex')} (another image, an image changed while its agent was stopped, or a clone's)`
  );
}

/** At hub start (and first open): is `path` the recovery file the record knew? */
export function recoveryFileChange(rec: VolumeRecord, path: string): string | null {
  if (isRbdPath(path)) return null; // an image's identity is its claim (rbd-target.ts), checked at open
  const now = fingerprintOf(path);
  const known = rec.recoveryFile;
  // A record from before identities, or a target that is not a file (tests' memory volumes).
  if (!known) return null;
  if (now === null) {
    // The record's file held data and this path holds nothing: the file is gone, or --vol names a new path.
    return `recovery file ${path} does not exist, but the record says ${known.path} held the replica's data`;
  }
  const moved = known.path !== path ? ` (the record knew ${known.path})` : '';
  const change = fileChange(loadFingerprint(known.fp), now, known.clean);
  if (change === null) return null;
  return `recovery file ${path}${moved} is not the one the record knew: ${change}`;
}

/** The recovery file's fingerprint now, for the record; `clean`: saved after the hub's last write. */
export function recoveryFileNow(path: string, clean: boolean): VolumeRecord['recoveryFile'] {
  if (isRbdPath(path)) return undefined; // not a file: never stat an rbd: name
  const fp = fingerprintOf(path);
  return fp ? { path, fp: storeFingerprint(fp), clean } : undefined;
}

/** The record of a checksum resync starting now: the answer to an identity that differs. */
export function newChecksumResync(reason: string): ChecksumResyncRecord {
  const at = new Date().toISOString();
  return { reason, startedAt: at, finishedAt: null, comparedBytes: 0, matchedBytes: 0, movedBytes: 0 };
}
