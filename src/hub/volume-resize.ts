// Online resize (`rephub volume resize NAME`, DRBD's `resize`), SPEC.md 5.18: the hub asks the
// agent for the volume's size (VOLUME_SIZE); the agent grows the volume to its image's size and
// answers in the write stream; applying that answer, in order, grows the replica (Replica.grow)
// before any later write, so only the new space turns dirty and syncs. A smaller size is a
// shrink: refused, nothing changes. SizeQueries is one session's questions in flight.
import { encodeVolumeSize } from '../../protocol';
import type { Logger } from '../log';
import type { Replica, TargetOpener } from './replica';
import { isRbdPath } from './rbd-target';
import { ResizeResult, VolumeHost, VolumeRefused, refuseInFailover, replicaNamed } from './volume-set';
export type { ResizeResult } from './volume-set';

const ANSWER_MS = 10_000; // an agent answers at once; longer means it is gone or stuck

/** The operator's resize: the session holding the volume asks its agent (VolumeSession.askSize). */
export async function resizeVolume(hub: VolumeHost, name: string): Promise<ResizeResult> {
  const r = replicaNamed(hub, name);
  refuseInFailover(hub, name, 'resize', true);
  if (r.hold) throw new VolumeRefused(`cannot resize volume ${name}: it is ${r.hold}`);
  if (isRbdPath(r.spec.path)) throw new VolumeRefused(`cannot resize volume ${name}: its recovery volume is on RBD`);
  for (const s of hub.sessions) if ((s as unknown) === r.owner) return s.askSize(r);
  throw new VolumeRefused(`cannot resize volume ${name}: no agent has it attached, and only the agent knows its size`);
}

/** Apply the agent's answer `found` for `r` (in stream order): grow, or refuse a shrink or no change. */
export async function applyVolumeSize(
  r: Replica,
  found: number,
  open: TargetOpener,
  log: Logger,
): Promise<ResizeResult> {
  const old = r.record!.sizeBytes;
  const ctx = { volume: r.name, sizeBytes: old, imageBytes: found };
  if (found < old) {
    log.error(ctx, 'resize refused: the protected image is smaller than the volume (a shrink is not supported)');
    throw new VolumeRefused(
      `cannot shrink volume ${r.name}: its image is ${found} bytes, the protected volume ${old} bytes; volumes only grow`,
    );
  }
  if (found === old)
    throw new VolumeRefused(`volume ${r.name} did not grow: its image is ${old} bytes (grow it first)`);
  await r.grow(found, open);
  log.info({ ...ctx, dirtyBytes: r.bitmap!.dirtyBytes }, 'volume grew online; syncing only the new space');
  r.owner?.pump();
  return { name: r.name, state: r.state, oldSizeBytes: old, sizeBytes: found, dirtyBytes: r.bitmap!.dirtyBytes };
}

interface Waiter {
  resolve(r: ResizeResult): void;
  reject(e: Error): void;
  timer: NodeJS.Timeout;
}

/** One session's size questions in flight: at most one per volume. */
export class SizeQueries {
  private readonly waiting = new Map<number, Waiter>(); // by volume id; at most the session's volumes

  constructor(
    private readonly send: (bufs: Buffer[]) => void,
    private readonly open: TargetOpener,
    private readonly log: Logger,
  ) {}

  ask(volumeId: number, r: Replica): Promise<ResizeResult> {
    if (this.waiting.has(volumeId)) return Promise.reject(new VolumeRefused(`a resize of ${r.name} is under way`));
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.waiting.delete(volumeId);
        reject(new VolumeRefused(`the agent did not answer the size of ${r.name} within ${ANSWER_MS} ms`));
      }, ANSWER_MS);
      this.waiting.set(volumeId, { resolve, reject, timer });
      this.send([encodeVolumeSize(volumeId, r.record!.sizeBytes)]);
    });
  }

  /** The answer was applied (`outcome`) or refused (`error`); an unasked one (a late answer) is only logged. */
  settle(volumeId: number, outcome: ResizeResult | null, error: Error | null): void {
    const w = this.waiting.get(volumeId);
    if (!w) return;
    this.waiting.delete(volumeId);
    clearTimeout(w.timer);
    if (outcome) w.resolve(outcome);
    else w.reject(error ?? new Error('no answer'));
  }

  /** VOLUME_SIZE from the agent, in stream order: `rep` grows before any later frame (or a shrink is refused). */
  async answered(volumeId: number, rep: Replica, found: number): Promise<void> {
    if (rep.hold === 'removed' || found === 0) return this.settle(volumeId, null, new VolumeRefused('no size'));
    try {
      this.settle(volumeId, await applyVolumeSize(rep, found, this.open, this.log), null);
    } catch (e) {
      if (!(e instanceof VolumeRefused)) throw e; // the recovery volume could not grow: the session fails
      this.settle(volumeId, null, e);
    }
  }

  /** The session ended: no answer will come. */
  cancel(): void {
    for (const id of [...this.waiting.keys()]) this.settle(id, null, new VolumeRefused('the agent session ended'));
  }
}
