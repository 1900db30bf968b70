// Recovery volumes on Ceph RBD, as the hub uses them. The opener sends `rbd:` names to librbd
// (storage/rbd-volume.ts), creates a missing image at the protected volume's size and takes the
// image's exclusive lock before anything is written: the lock is the fence between hubs (a file
// is fenced by storage/lock.ts instead). The claim is this hub's mark in the image: a token in the
// image's metadata, also kept in the replica's record, rewritten at every open. A hub that finds
// another token than its record's knows that another hub (or a recreated image) changed the data
// since: its bitmap cannot vouch for it, and the volume is resynced by checksums.
import { randomUUID } from 'node:crypto';
import { isRbdName, parseRbdSpec, RbdVolume } from '../../storage/rbd-volume';
import { BlockTarget, BufferHolds, VolumeError } from '../../storage/volume';
import type { VolumeRecord } from '../../storage/state';
import type { Logger } from '../log';

/** The image metadata key of the claim. */
export const CLAIM_KEY = 'rephub.claim';

type Opener = (path: string, sizeBytes: number, holds?: BufferHolds) => BlockTarget | Promise<BlockTarget>;

/** `path` names an RBD image (`rbd:POOL/IMAGE…`), not a file: never stat it. */
export const isRbdPath = isRbdName;

/** A file opener that also opens `rbd:` names (through librbd, locked). */
export function withRbd(files: Opener): Opener {
  return (path, sizeBytes, holds) => (isRbdPath(path) ? openRbdTarget(path, sizeBytes) : files(path, sizeBytes, holds));
}

/** Open (creating it at `sizeBytes` when missing) and lock the image; closed again on failure. */
export async function openRbdTarget(name: string, sizeBytes: number): Promise<RbdVolume> {
  const vol = await RbdVolume.open(parseRbdSpec(name)!, sizeBytes);
  try {
    if (vol.sizeBytes < sizeBytes)
      throw new VolumeError(
        `${name}: the image is ${vol.sizeBytes} bytes but the protected volume is ${sizeBytes}: grow it (rbd resize) or remove it`,
        name,
      );
    await lockOrExplain(vol);
  } catch (e) {
    await vol.close().catch(() => undefined);
    throw e;
  }
  return vol;
}

async function lockOrExplain(vol: RbdVolume): Promise<void> {
  try {
    await vol.lock();
  } catch (e) {
    const owners = await vol.lockOwners().catch(() => '');
    throw new VolumeError(
      `${vol.path}: the image's exclusive lock is held by ${owners || 'another client'}: another hub writes this image ` +
        `(or a dead one whose watch has not expired yet); this hub does not write it (${(e as Error).message})`,
      vol.path,
    );
  }
}

/**
 * Claim `vol` for this hub: read the image's token, write a new one (before any data write) and
 * return it with the reason the record `rec` cannot vouch for the image, or null. The caller
 * persists the new token in the record: a crash between the two leaves them different, which
 * only costs a checksum resync, never a false match.
 */
export async function claimRbd(
  vol: RbdVolume,
  rec: VolumeRecord | undefined,
): Promise<{ token: string; reason: string | null; found: string | null }> {
  const found = await vol.metaGet(CLAIM_KEY);
  const token = randomUUID();
  await vol.metaSet(CLAIM_KEY, token);
  const known = rec?.rbdClaim;
  // No record: the caller treats an image that held data as seeded. A record from before claims
  // (a volume first protected into a file) has nothing to compare with.
  if (!rec || (known === undefined && found === null) || known === found) return { token, reason: null, found };
  const why = found === null ? 'the image carries no claim (recreated?)' : `another hub claimed it (${found})`;
  return {
    token,
    found,
    reason: `RBD image ${vol.path} changed since this hub's record (claim ${known ?? 'none'}): ${why}`,
  };
}

/** A recovery volume opened; `claim` for an RBD image (null for a file). */
export interface OpenedRecovery {
  target: BlockTarget;
  claim: { created: boolean; token: string; reason: string | null; found: string | null } | null;
}

/** Open a recovery volume with `open`; an RBD image is claimed for `rec` (closed if that fails). */
export async function openClaimed(
  open: Opener,
  path: string,
  sizeBytes: number,
  rec: VolumeRecord | undefined,
): Promise<OpenedRecovery> {
  const target = await open(path, sizeBytes);
  if (!(target instanceof RbdVolume)) return { target, claim: null };
  try {
    return { target, claim: { created: target.created, ...(await claimRbd(target, rec)) } };
  } catch (e) {
    await target.close().catch(() => undefined);
    throw e;
  }
}

/** Close an image nobody here uses (releasing its lock); false when it is still open (IO in flight). */
export async function releaseImage(t: BlockTarget, log: Logger, volume: string, path: string): Promise<boolean> {
  try {
    await t.close();
    log.info({ volume, recovery: path }, 'RBD image released: another hub may take it');
    return true;
  } catch (e) {
    log.warn({ volume, recovery: path, cause: (e as Error).message }, 'cannot close the RBD image; it stays open');
    return false;
  }
}
