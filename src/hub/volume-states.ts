// Every state a recovery volume can be in, with what it means: the one list that the replica's
// state type, the rephub_volume_state metric (one 0/1 series per state), docs/STATUS.md and the
// README are checked against. Adding a state is one entry here.

export const VOLUME_STATES = {
  unprotected: 'the hub has no record of it yet: no agent attached it, or attaching failed (see lastError)',
  syncing: 'initial sync or resync under way: regions may differ from the protected volume',
  protecting: 'converged: mirrored writes are applied as they come',
  degraded: 'the agent is gone without a clean shutdown; its next connection resyncs only what may differ',
  stopped: 'the agent shut down cleanly: nothing differs that the hub does not know of',
  error: 'the recovery volume failed a write or flush: its regions stay dirty, other volumes go on',
  'failed-over': 'promoted by failover: the recovery volume is the one in use, replication is stopped',
  paused:
    'paused by the operator (rephub volume pause): writes are not applied, their regions are marked dirty; resume resyncs them',
} as const;

export type ReplicaState = keyof typeof VOLUME_STATES;

/** The state names, in the order above. */
export const VOLUME_STATE_NAMES = Object.keys(VOLUME_STATES) as ReplicaState[];
