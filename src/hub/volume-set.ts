// Adding and removing recovery volumes on a running hub (a config reload: cli/reload.ts). A
// minimal version, to be reconciled with the hub's volume operations: an added volume is a new
// replica that the next REPORT_VM_VOLUMES of its agent attaches (an agent refused it before
// reports it again within its backoff, at most 30 s); a removed volume's agent session is closed
// (the agent reconnects at once and is refused that volume, its other volumes resync the delta),
// then the replica is checkpointed, closed and forgotten. Its record stays in the state store:
// putting the volume back resumes from it, with a delta resync, never a full one.
import type { Hub } from './hub';
import type { Replica, ReplicaSpec } from './replica';

export class VolumeSetRefused extends Error {}

/** Starts protecting `spec` (not attached until its agent reports it). */
export function addVolume(hub: Hub, spec: ReplicaSpec): Replica {
  if (hub.replicas.has(spec.name)) throw new VolumeSetRefused(`volume ${spec.name} exists already`);
  const r = hub.addReplica(spec);
  hub.log.info({ volume: spec.name, path: spec.path, vm: spec.vm }, 'volume added: waiting for its agent');
  return r;
}

/** Stops protecting `name` cleanly: its session closed, its checkpoint saved, its target closed. */
export async function removeVolume(hub: Hub, name: string): Promise<void> {
  const r = hub.replicas.get(name);
  if (!r) throw new VolumeSetRefused(`no volume ${name}`);
  const fo = hub.failover.status();
  if (fo.failoverTest || fo.failover)
    throw new VolumeSetRefused(`volume ${name}: a failover test or failover is under way; end it first`);
  const ctx = { volume: name, path: r.spec.path };
  for (const s of [...hub.sessions]) {
    if (!s.volumes.some((v) => v.replica === r)) continue;
    hub.log.warn({ ...ctx, session: s.id, vm: s.vm }, 'volume removed: closing the agent session that protects it');
    s.fail(new Error(`volume ${name} was removed from the hub; reconnect`));
    await hub.endSession(s);
  }
  await r.idle;
  await r.checkpoint();
  await r.target?.close();
  await r.saveCleanIdentity();
  hub.replicas.delete(name);
  hub.log.info({ ...ctx, state: r.state }, 'volume removed: stopped, its record kept');
}
