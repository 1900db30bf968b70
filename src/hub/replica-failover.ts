// A replica's promotion and failback (called by failover.ts and failback-volume.ts): the
// failover maps it carries while promoted (its `failover` field, set and dropped only here) and
// the hand-over of its dirty bits to them when failback starts writing back.
import { assert } from '../assert';
import type { FailbackWatcher, FailoverMaps, Replica } from './replica';

/** Promoted: the protected side's writes are only recorded in `maps` until failback. */
export function enterFailover(r: Replica, maps: FailoverMaps): void {
  assert(r.failover === null, 'a replica is promoted once');
  r.failover = maps;
  r.setState('failed-over');
}

/**
 * Failback starts writing back (at a point of the write stream): protected writes are applied
 * from now on and reported to `watch`. The replica's own dirty bits (what the hub never
 * received) move to the recovery-changed map first, so a crash in failback still finds them.
 */
export function beginFailback(r: Replica, watch: FailbackWatcher): void {
  const f = r.failover,
    bm = r.bitmap!;
  assert(f !== null && f.failingBack === null, 'failback starts once, on a promoted replica');
  for (const [a, b] of bm.runs()) f.recoveryChanged.mark(a * bm.regionSize, Math.min(b * bm.regionSize, bm.sizeBytes));
  bm.clearRegions(0, bm.regionOf(bm.sizeBytes - 1));
  f.failingBack = watch;
  r.log.info({ volume: r.name }, 'failback: writing back; protected writes are applied again');
}

/** Failback done: the failover maps are closed and dropped. */
export function endFailover(r: Replica): void {
  const f = r.failover;
  if (!f) return;
  f.recoveryChanged.close();
  f.protectedChanged.close();
  r.failover = null;
}
