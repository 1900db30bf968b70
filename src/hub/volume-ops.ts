// The operator's volume operations that keep a volume in the hub's set: pause and resume
// (`rephub volume pause|resume NAME`). Paused, the hub applies none of the volume's writes and
// reads nothing of it: each write only turns its regions dirty, durably before its ack, so a
// resume (even after a hub restart: the record says paused) resyncs exactly what changed. The
// agent keeps mirroring: the link carries the writes, the bitmap keeps their place.
import type { Replica } from './replica';
import { VolumeHost, VolumeRefused, refuseInFailover, replicaNamed } from './volume-set';

/** What a volume operation answers: the volume, its state after it, its dirty bytes. */
export interface VolumeOpResult {
  name: string;
  state: string;
  dirtyBytes: number;
}

function result(r: Replica): VolumeOpResult {
  return { name: r.name, state: r.state, dirtyBytes: r.bitmap?.dirtyBytes ?? 0 };
}

/** The session that has `r` attached, at a point of its write stream (or now, with none). */
function atStreamPoint<T>(r: Replica, fn: () => Promise<T>): Promise<T> {
  return r.owner ? r.owner.barrier(fn) : fn();
}

/** Pause: from this point of the VM's write stream on, writes only mark the bitmap. */
export async function pauseVolume(hub: VolumeHost, name: string): Promise<VolumeOpResult> {
  const r = replicaNamed(hub, name);
  refuseInFailover(hub, name, 'pause', false);
  if (r.hold === 'paused') throw new VolumeRefused(`volume ${name} is already paused`);
  if (!r.record) throw new VolumeRefused(`volume ${name} has never been protected: nothing to pause`);
  await atStreamPoint(r, () => r.setHold('paused'));
  hub.log.info(
    { volume: name, dirtyBytes: r.bitmap?.dirtyBytes ?? 0 },
    'volume paused: its writes are not applied, only marked dirty until it is resumed',
  );
  return result(r);
}

/** Resume: the regions written while paused (and anything dirty before) are resynced. */
export async function resumeVolume(hub: VolumeHost, name: string): Promise<VolumeOpResult> {
  const r = replicaNamed(hub, name);
  if (r.hold !== 'paused') throw new VolumeRefused(`volume ${name} is not paused (state ${r.state})`);
  await atStreamPoint(r, () => r.setHold(null));
  hub.log.info({ volume: name, dirtyBytes: r.bitmap?.dirtyBytes ?? 0 }, 'volume resumed: resyncing what changed');
  r.owner?.pump();
  return result(r);
}
