// A recovery volume's /status entry, read from its public state: the record, the bitmap, the
// counters, the alarm, the failover test's view and the failover maps.
import type { GuardedTarget } from '../../storage/overlay';
import type { DirtyBitmap } from '../../storage/bitmap';
import type { ChecksumResyncRecord, VolumeRecord } from '../../storage/state';
import type { EncryptionAlarm } from './encryption-alarm';
import type { ReplicaStats } from './replica-stats';

type Changed = { bitmap: { dirtyBytes: number } };

/** What the status reads of a Replica (its public face; no import of replica.ts, which uses this). */
export interface ReplicaView {
  readonly name: string;
  readonly spec: { path: string };
  readonly state: string;
  readonly record?: VolumeRecord;
  readonly bitmap?: DirtyBitmap;
  readonly stats: ReplicaStats;
  readonly target?: GuardedTarget;
  readonly checksumResync: ChecksumResyncRecord | null;
  readonly alarm: EncryptionAlarm;
  readonly failover: { recoveryChanged: Changed; protectedChanged: Changed } | null;
  rpoLagMs(): number | null;
}

export function replicaStatus(r: ReplicaView, regionSize: number, lastError: string | null) {
  const bm = r.bitmap,
    rec = r.record,
    st = r.stats;
  return {
    name: r.name,
    recovery: r.spec.path,
    state: r.state,
    volumeId: rec?.id ?? null,
    generation: rec?.generation ?? 0,
    vm: rec?.vm ?? null,
    sizeBytes: rec?.sizeBytes ?? 0,
    regionSize,
    dirtyBytes: bm ? bm.dirtyBytes : 0,
    dirtyRegions: bm ? bm.dirtyRegions : 0,
    syncPass: rec?.syncPass ?? 0,
    syncCursor: rec?.syncCursor ?? 0,
    bytesApplied: st.applied,
    // written around the page cache (O_DIRECT)
    bytesDirect: (r.target?.base as { directBytes?: number } | undefined)?.directBytes ?? 0,
    writesApplied: st.appliedWrites,
    syncBytes: st.synced,
    syncMode: r.checksumResync ? 'checksum' : 'copy',
    checksumResync: rec?.checksumResync ?? null, // the running one, or the last one
    checksumComparedBytes: st.checksumCompared, // since the hub started (metrics)
    checksumMovedBytes: st.checksumMoved,
    rpoLagMs: r.rpoLagMs(),
    throughputBps: st.throughputBps,
    lastError,
    errors: st.faults,
    alarm: r.alarm.status(),
    failoverTest: r.target?.view
      ? { keptBytes: r.target.view.keptBytes, activeBytes: r.target.view.activeBytes }
      : null,
    failover: r.failover
      ? {
          recoveryChangedBytes: r.failover.recoveryChanged.bitmap.dirtyBytes,
          protectedChangedBytes: r.failover.protectedChanged.bitmap.dirtyBytes,
        }
      : null,
  };
}
