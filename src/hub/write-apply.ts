// Applying protected writes to recovery volumes: inline when nothing is queued before the write
// (applyNow: no queue entry, no promise), or from the apply queue; a failed recovery volume
// write keeps its regions dirty. Failed over, a write is only recorded until failback starts
// writing back; then it is applied and reported to failback too (failback-volume.ts).
import { SECTOR, IO_OK } from '../../protocol';
import type { ProtectedWrite } from '../../protocol';
import type { Replica } from './replica';
import type { VolumeSync } from './sync';
import { ZEROES } from '../../storage/volume';

/** The session's attached volumes, by id (the SyncEngine). */
export interface VolumeLookup {
  volume(id: number, what: string): VolumeSync;
}

/** What counts applied writes and flushes their volumes (the GroupCommit). */
export interface AppliedSink {
  applied(target: Replica | null): void;
}

export class WriteApplier {
  constructor(
    private readonly volumes: VolumeLookup,
    private readonly commit: AppliedSink,
  ) {}

  /** A protected write from the apply queue. */
  async apply(m: ProtectedWrite): Promise<void> {
    const sync = this.volumes.volume(m.volumeId, 'PROTECTED_WRITE');
    sync.checkExtent(m.offsetSectors, m.sizeSectors, 'PROTECTED_WRITE');
    const start = m.offsetSectors * SECTOR,
      end = start + m.sizeSectors * SECTOR;
    const rep = sync.replica,
      bm = sync.bitmap;
    const first = bm.regionOf(start),
      last = bm.regionOf(end - 1);
    if (rep.failover) {
      // Promoted replica: the protected side's writes are recorded, not applied, until failback
      // writes back; from then on they are applied too, and failback hears of each (in order).
      rep.failover.protectedChanged.mark(start, end);
      const back = rep.failover.failingBack;
      if (!back) return this.commit.applied(null);
      back.protectedWrite(first, last);
    }
    if (rep.hold !== null) return this.held(sync, first, last);
    sync.touch(first, last);
    let target: Replica | null = null;
    if (m.ioStatus === IO_OK && rep.alarm.due(m.data.length)) {
      const busy = rep.target!.landing(start, end); // the sample is read inline: after what is in flight
      if (busy) await busy.catch(() => undefined);
      scoreWrite(rep, m.data, start);
    }
    if (m.ioStatus !== IO_OK) {
      // The guest's write failed locally; what the protected volume holds there is unknown.
      await rep.markDirty(first, last);
    } else {
      try {
        if (!rep.target!.tryWriteSync(m.data, start)) await rep.target!.write(m.data, start);
        this.written(sync, m.data.length, start, end, first, last);
        target = rep;
      } catch (e) {
        await sync.fault(e as Error, start, first, last);
      }
    }
    this.commit.applied(target);
    sync.settle();
  }

  /**
   * A small write that applyNow() will take later in this turn, after the others of its socket
   * read (inline-batch.ts): the recovery volume's filters prepare for it (the journal stages its
   * before-image, written with theirs in one append). Throws as applyNow() would on a bad volume
   * or extent; anything else applyNow() would refuse is not announced.
   */
  prepare(m: ProtectedWrite): void {
    const sync = this.volumes.volume(m.volumeId, 'PROTECTED_WRITE');
    sync.checkExtent(m.offsetSectors, m.sizeSectors, 'PROTECTED_WRITE');
    const rep = sync.replica;
    if (rep.failover || rep.hold !== null || m.ioStatus !== IO_OK || !rep.target) return;
    const start = m.offsetSectors * SECTOR;
    rep.target.prepareWrite(start, start + m.sizeSectors * SECTOR);
  }

  /**
   * apply() for a small write arriving with nothing queued before it, done before returning.
   * False: it takes the queue (failover, a failed guest write, a point-in-time view to
   * preserve, a large write, or a failed pwrite, redone and handled there).
   */
  applyNow(m: ProtectedWrite): boolean {
    const sync = this.volumes.volume(m.volumeId, 'PROTECTED_WRITE');
    sync.checkExtent(m.offsetSectors, m.sizeSectors, 'PROTECTED_WRITE');
    const start = m.offsetSectors * SECTOR,
      end = start + m.sizeSectors * SECTOR;
    const rep = sync.replica,
      t = rep.target;
    if (rep.failover || rep.hold !== null || m.ioStatus !== IO_OK || !t) return false;
    if (t.landing(start, end)) return false; // a direct write in flight under it (--cache none)
    if (rep.alarm.due(m.data.length)) {
      const old = rep.alarmReader.read(start, Math.min(m.data.length, rep.alarm.sampleBytes));
      if (!old) return false; // scored on the queue's path, which reads asynchronously
      rep.alarm.score(m.data, old);
    }
    const bm = sync.bitmap,
      first = bm.regionOf(start),
      last = bm.regionOf(end - 1);
    sync.touch(first, last); // again if it is queued after all: the same marks
    try {
      if (!t.tryWriteSync(m.data, start)) return false;
    } catch {
      return false;
    }
    this.written(sync, m.data.length, start, end, first, last);
    this.commit.applied(rep);
    sync.settle();
    return true;
  }

  /**
   * A write to a held volume is not applied. Paused: its regions turn dirty, durably before the
   * write is acked (the agent then forgets it), so a resume, even after a hub restart, reads them.
   * Removed (writes sent before the agent heard STOP_PROTECT): dropped, acked.
   */
  private async held(sync: VolumeSync, first: number, last: number): Promise<void> {
    const rep = sync.replica;
    if (rep.hold === 'paused') {
      sync.touch(first, last); // a read in flight over them is stale now
      let clean = false;
      for (let r = first; r <= last && !clean; r++) clean = !sync.bitmap.get(r);
      if (clean) await rep.markDirty(first, last); // an LMDB commit only for newly dirty regions
    }
    this.commit.applied(null);
  }

  private written(sync: VolumeSync, bytes: number, start: number, end: number, first: number, last: number): void {
    sync.replica.recordApplied(bytes);
    sync.replica.alarm.count(bytes);
    sync.written(start, end, first, last);
  }
}

/**
 * Score a write for the encryption alarm against what it overwrites. A recovery volume read
 * inline (a file) is scored now; else (an RBD image) the read is asked for now, before the write,
 * and the image's write window lands the write only after it (storage/write-window.ts): the
 * sample waits for the cluster, the apply queue does not.
 */
function scoreWrite(rep: Replica, data: Buffer, start: number): void {
  const n = Math.min(data.length, rep.alarm.sampleBytes);
  // known zero: the old bytes need no read (an RBD round trip); a zero sample is never suspicious
  if (rep.knownZeroCovers(start, start + n)) return rep.alarm.score(data, ZEROES.subarray(0, n));
  const inline = rep.alarmReader.read(start, n);
  if (inline) return rep.alarm.score(data, inline);
  rep.alarm.take(data.length);
  const old = Buffer.allocUnsafe(n),
    sample = Buffer.from(data.subarray(0, n)), // `data` goes back to the pool once applied
    bytes = data.length;
  rep.target!.read(old, start).then(
    () => rep.alarm.judge(sample, old, bytes),
    () => undefined, // unscored: the write itself reports a failing volume
  );
}
