// Failback of one promoted recovery volume, crash-atomic and losing no protected write. Owns the
// watch over protected writes that arrive while the volume fails back.
//
// Order, per volume:
//  1. At one point of the agent's write stream (a barrier): the union of what either side changed
//     (plus what the hub never received) is fixed, the replica's own dirty bits are moved into the
//     recovery-changed map (persisted, so a crash keeps them), and protected writes are applied to
//     the recovery volume again from here on, each also recorded in the protected-changed map.
//  2. winner recovery: write-back passes. The agent applies a write-back under the same range
//     locks as guest writes and answers only once it is durable, so on the link (which the hub
//     applies in order) a protected write that comes before the answer of a write-back covering
//     its region landed *before* that write-back on the protected image and was overwritten.
//     Such regions are written back again (the recovery volume now holds that write), until a
//     pass leaves none. A write after the answer landed after it: applied here, equal there.
//  3. The maps are dropped (files first) and the volume leaves the failover record only then:
//     a crash before leaves it failed over with its maps, and failback can simply run again.
import { DirtyBitmap } from '../../storage/bitmap';
import { assert } from '../assert';
import type { Replica, ReplicaOwner } from './replica';
import { FailoverError } from './failover-at';
import { beginFailback, endFailover } from './replica-failover';

export type Side = 'recovery' | 'protected';
/** Whose changes win at failback: one side for every volume, or one per volume. */
export type Winner = Side | Record<string, Side>;

/** Write-back passes before giving up on a region the protected VM keeps rewriting. */
const MAX_PASSES = 16;

/** Regions still to be settled by the write-back pass in progress, and those to write again. */
export class FailbackWatch {
  private pending: DirtyBitmap;
  private again: DirtyBitmap;

  constructor(regions: DirtyBitmap) {
    this.pending = copyOf(regions);
    this.again = new DirtyBitmap(regions.sizeBytes, regions.regionSize);
  }

  /** A protected write to regions [first, last] is applied (stream order) during failback. */
  protectedWrite(first: number, last: number): void {
    for (let r = first; r <= last; r++) if (this.pending.get(r)) this.again.setRegions(r, r);
  }

  /** The agent answered (durably) the write-back of regions [first, last]. */
  settled(first: number, last: number): void {
    this.pending.clearRegions(first, last);
  }

  /** The pass is over: the regions to write back again (now pending), or null when none. */
  nextPass(): DirtyBitmap | null {
    assert(this.pending.dirtyRegions === 0, 'a pass ends when every write-back of it is settled');
    if (this.again.dirtyRegions === 0) return null;
    const next = this.again;
    this.pending = copyOf(next);
    this.again = new DirtyBitmap(next.sizeBytes, next.regionSize);
    return next;
  }
}

function copyOf(bm: DirtyBitmap): DirtyBitmap {
  const out = new DirtyBitmap(bm.sizeBytes, bm.regionSize);
  for (const [a, b] of bm.runs()) out.setRegions(a, b - 1);
  return out;
}

export interface VolumeFailbackResult {
  name: string;
  movedBytes: number;
  recoveryChangedBytes: number;
  protectedChangedBytes: number;
  winner: Side;
  passes: number;
}

/**
 * Steps 1 and 2 for `r` attached to session `s`. Returns once the protected volume holds, durably,
 * every region failback owes it; the caller then drops the maps (step 3).
 */
export async function failBackVolume(r: Replica, s: ReplicaOwner, winner: Side): Promise<VolumeFailbackResult> {
  const f = r.failover!,
    rec = r.record!;
  const out: VolumeFailbackResult = {
    name: r.name,
    movedBytes: 0,
    recoveryChangedBytes: f.recoveryChanged.bitmap.dirtyBytes,
    protectedChangedBytes: f.protectedChanged.bitmap.dirtyBytes,
    winner,
    passes: 0,
  };
  let watch: FailbackWatch | null = null;
  const union = new DirtyBitmap(rec.sizeBytes, rec.regionSize);
  await s.barrier(async () => {
    for (const bm of [f.recoveryChanged.bitmap, f.protectedChanged.bitmap, r.bitmap!])
      for (const [a, b] of bm.runs()) union.setRegions(a, b - 1);
    if (winner === 'protected') {
      // Resync protected -> recovery over everything either side touched; durable before the maps go.
      for (const [a, b] of union.runs()) r.bitmap!.setRegions(a, b - 1);
      await r.commitDirty();
      endFailover(r); // here, in the stream: every later protected write is applied normally
      return;
    }
    watch = new FailbackWatch(union);
    beginFailback(r, watch);
  });
  if (winner === 'protected') return out;
  assert(watch !== null, 'winner recovery watches the write stream');
  const w: FailbackWatch = watch;
  for (let regions: DirtyBitmap | null = union; regions; regions = w.nextPass()) {
    if (++out.passes > MAX_PASSES)
      throw new Error(
        `failback of ${r.name}: the protected VM kept rewriting regions being written back (${MAX_PASSES} passes); stop it and run failback again`,
      );
    out.movedBytes += await s.writeBack(r, regions, w);
  }
  return out;
}

/** The winner of each volume: one side for all, or a side per named volume (checked). */
export function winnersOf(volumes: string[], w: Winner | undefined): Map<string, Side> {
  const out = new Map<string, Side>();
  const isSide = (v: unknown): v is Side => v === 'recovery' || v === 'protected';
  if (w === undefined) return out;
  if (typeof w === 'string') {
    if (!isSide(w)) throw new FailoverError(`winner must be "recovery" or "protected", not ${JSON.stringify(w)}`);
    for (const n of volumes) out.set(n, w);
    return out;
  }
  for (const [n, side] of Object.entries(w)) {
    if (!volumes.includes(n))
      throw new FailoverError(
        `winner names volume ${n}, which is not failed over (failed over: ${volumes.join(', ')})`,
      );
    if (!isSide(side))
      throw new FailoverError(`winner of ${n} must be "recovery" or "protected", not ${JSON.stringify(side)}`);
    out.set(n, side);
  }
  return out;
}
