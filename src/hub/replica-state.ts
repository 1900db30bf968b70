// The states of a recovery volume (the list and their meanings: volume-states.ts; the replica's
// state machine, replica.ts, owns the changes) and the operator's holds on it (volume-ops.ts,
// volume-set.ts).
export type { ReplicaState } from './volume-states';

/** What the operator holds a volume in: writes are not applied, nothing is read. */
export type VolumeHold = 'paused' | 'removed';
