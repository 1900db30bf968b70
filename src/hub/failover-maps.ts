// The shapes of a promoted replica's failover bookkeeping (owned by the replica, replica.ts;
// filled by failover.ts and failback-volume.ts): what each side wrote since the promotion, and
// failback's view of the write stream.
import type { DirtyLog } from '../../storage/dirty-log';

/** Failover bookkeeping: what each side wrote since the replica was promoted. */
export interface FailoverMaps {
  recoveryChanged: DirtyLog; // written by the recovery VM
  protectedChanged: DirtyLog; // written on the protected side (mirrored or reported) meanwhile
  /** Set while failback writes back (winner recovery): protected writes are applied again. */
  failingBack: FailbackWatcher | null;
}

/** Failback's view of the write stream (failback-volume.ts's FailbackWatch). */
export interface FailbackWatcher {
  /** A protected write to regions [first, last] is applied, in stream order, during failback. */
  protectedWrite(first: number, last: number): void;
  /** The agent durably wrote back regions [first, last] (answered in stream order). */
  settled(first: number, last: number): void;
}
