// The states of a recovery volume (the replica's state machine, replica.ts, owns the changes)
// and the operator's holds on it (volume-ops.ts, volume-set.ts).
export type ReplicaState =
  'unprotected' | 'syncing' | 'protecting' | 'degraded' | 'stopped' | 'error' | 'failed-over' | 'paused';

/** What the operator holds a volume in: writes are not applied, nothing is read. */
export type VolumeHold = 'paused' | 'removed';
