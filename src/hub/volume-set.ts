// The hub's set of recovery volumes, changed while it runs: addVolume (a config reload, SIGHUP)
// and removeVolume (`rephub volume remove`, or a volume gone from the config). An added volume is
// offered at once to a connected agent that reported it; a removed one is detached from its
// session at a point of the write stream, the agent is told (STOP_PROTECT), its record is marked
// removed and the recovery file is left on disk untouched. The Hub owns the map; this changes it.
import type { Logger } from '../log';
import type { Replica, ReplicaSpec } from './replica';

/** What a resize answers (volume-resize.ts). */
export interface ResizeResult {
  name: string;
  state: string;
  oldSizeBytes: number;
  sizeBytes: number;
  dirtyBytes: number;
}

/** An operation refused in the volume's current state, or for a volume the hub does not have (HTTP 409). */
export class VolumeRefused extends Error {}

/** A session as the volume set needs it (AgentSession). */
export interface VolumeSession {
  /** Attach `name` if the agent reported it and it was refused for want of a recovery volume. */
  offer(name: string): Promise<boolean>;
  /** Stop protecting `replica` on this session, at the current point of the write stream. */
  removeVolume(replica: Replica): Promise<void>;
  /** Ask the agent for `replica`'s size and grow it (volume-resize.ts). */
  askSize(replica: Replica): Promise<ResizeResult>;
}

/** What the volume set needs of the hub (Hub satisfies it). */
export interface VolumeHost {
  readonly replicas: Map<string, Replica>;
  readonly sessions: Iterable<VolumeSession>;
  readonly log: Logger;
  /** The names in a failover test and in a failover now (failover.ts's records). */
  failoverVolumes(): { test: string[]; failover: string[] };
  /** A new replica for `spec`, wired as the hub wires its configured ones (journal, alarm). */
  adopt(spec: ReplicaSpec): Replica;
}

/** The replica called `name`, or a clear refusal. */
export function replicaNamed(hub: VolumeHost, name: string): Replica {
  const r = hub.replicas.get(name);
  if (!r) {
    const known = [...hub.replicas.keys()].join(', ') || 'none';
    throw new VolumeRefused(`no volume ${name} on this hub (volumes: ${known})`);
  }
  return r;
}

/** Refuse `what` on a volume in a failover test or a failover (`testToo`: a test counts as well). */
export function refuseInFailover(hub: VolumeHost, name: string, what: string, testToo: boolean): void {
  const f = hub.failoverVolumes();
  if (f.failover.includes(name)) throw new VolumeRefused(`cannot ${what} volume ${name}: it is failed over`);
  if (testToo && f.test.includes(name))
    throw new VolumeRefused(`cannot ${what} volume ${name}: a failover test is using it (stop the test first)`);
}

/** Protect a new volume; offered at once to each connected agent that reported it. */
export async function addVolume(hub: VolumeHost, spec: ReplicaSpec): Promise<{ name: string; attached: boolean }> {
  if (hub.replicas.has(spec.name)) throw new VolumeRefused(`volume ${spec.name} is already configured`);
  const rep = hub.adopt(spec);
  hub.log.info({ volume: spec.name, recovery: spec.path, vm: spec.vm }, 'volume added to protection');
  let attached = false;
  for (const s of [...hub.sessions]) attached = (await s.offer(rep.name)) || attached;
  return { name: rep.name, attached };
}

/**
 * Stop protecting `name`. The record is marked removed first (durable), so a crash after it
 * leaves the volume removed; then its session lets go of it at a point of the write stream.
 * The recovery file is closed and kept as it is.
 */
export async function removeVolume(hub: VolumeHost, name: string): Promise<{ name: string; recovery: string }> {
  const ending = replicaNamed(hub, name).owner?.ending;
  if (ending) await ending; // an ended session applying what it received lets go first
  // From here to setHold() nothing waits: a second remove finds the hold set.
  const rep = replicaNamed(hub, name);
  refuseInFailover(hub, name, 'remove', true);
  if (rep.hold === 'removed') throw new VolumeRefused(`volume ${name} is being removed`);
  if (rep.checksumResync && rep.owner)
    throw new VolumeRefused(`volume ${name} is being compared by a checksum resync; remove it once that ends`);
  const owner = rep.owner;
  await rep.setHold('removed');
  for (const s of hub.sessions) if ((s as unknown) === owner) await s.removeVolume(rep);
  await rep.idle;
  hub.replicas.delete(name);
  await rep.checkpoint().catch((e) => hub.log.warn({ volume: name, cause: e.message }, 'checkpoint failed'));
  await rep.target?.close();
  rep.target = undefined;
  rep.alarmReader.close();
  hub.log.info(
    { volume: name, recovery: rep.spec.path, vm: rep.record?.vm },
    'volume removed from protection; its recovery volume is kept on disk untouched',
  );
  return { name, recovery: rep.spec.path };
}
