// A recovery volume on the hub: the single owner of its target, record and dirty bitmap.
// Sessions borrow it while attached; the sync engine asks it to set/clear regions.
import * as fs from 'node:fs';
import { BlockTarget, FileVolume, writeZeroes } from '../../storage/volume';
import { GuardedTarget } from '../../storage/overlay';
import { DirtyLog } from '../../storage/dirty-log';
import { DirtyBitmap } from '../../storage/bitmap';
import { KnownZeroMap, TrackedTarget } from '../../storage/tracking';
import { StateStore, VolumeRecord } from '../../storage/state';

export type ReplicaState = 'unprotected' | 'syncing' | 'protecting' | 'degraded' | 'stopped' | 'error' | 'failed-over';

/** Failover bookkeeping: what each side wrote since the replica was promoted. */
export interface FailoverMaps {
  recoveryChanged: DirtyLog; // written by the recovery VM
  protectedChanged: DirtyLog; // written on the protected side (mirrored or reported) meanwhile
}

export interface ReplicaSpec {
  name: string; // protected volume name the agent reports (V1)
  path: string; // recovery volume file or device (V1R)
  vm?: string; // only this VM (authenticated identity) may protect it
}

export type TargetOpener = (path: string, sizeBytes: number) => BlockTarget;
export const openFileTarget: TargetOpener = (path, sizeBytes) => FileVolume.open(path, { createSize: sizeBytes, minSize: sizeBytes });
/** --cache none: large aligned writes bypass the page cache (O_DIRECT). */
export const openDirectTarget: TargetOpener = (path, sizeBytes) => FileVolume.open(path, { createSize: sizeBytes, minSize: sizeBytes, direct: true });

export class Replica {
  state: ReplicaState = 'unprotected';
  record?: VolumeRecord;
  target?: GuardedTarget;
  failover: FailoverMaps | null = null; // set while the replica is promoted
  bitmap?: DirtyBitmap;
  owner: { vm: string; fail(e: Error): void; rpoLagMs(): number } | null = null; // the session that has it attached
  private outOfSyncSince: number | null = Date.now(); // null while protecting
  throughputBps = 0; // bytes/s applied (mirrored writes + sync), sampled by the hub
  private sampled = { at: Date.now(), bytes: 0 };
  lastError?: string;
  lastWriteOk = true; // the last write to the recovery volume succeeded
  /** Resolves when the last owner's in-progress apply has finished. */
  idle: Promise<void> = Promise.resolve();
  bytesApplied = 0;
  errors = 0; // failed writes/flushes of the recovery volume and failed remote reads
  writesApplied = 0;
  syncBytes = 0;
  private syncBytesDropped = 0;

  constructor(readonly spec: ReplicaSpec, private readonly store: StateStore, private readonly regionSize: number) {
    const rec = store.volume(spec.name);
    if (rec) {
      this.record = rec;
      this.bitmap = new DirtyBitmap(rec.sizeBytes, rec.regionSize);
      store.loadBitmap(spec.name, this.bitmap);
      this.bitmap.takeChangedPages();
      this.state = rec.cleanShutdown ? 'stopped' : 'degraded';
    }
  }

  get name(): string {
    return this.spec.name;
  }

  /**
   * Open (or create) the recovery volume for an agent reporting `sizeBytes`, and work out what
   * must be resynced. `trustAgentReport`: the agent will report its own dirty extents.
   */
  async attach(sizeBytes: number, open: TargetOpener, trustAgentReport: boolean, vm: string): Promise<VolumeRecord> {
    let rec = this.record;
    if (rec && rec.sizeBytes !== sizeBytes) {
      throw new Error(`protected volume ${this.name} is now ${sizeBytes} bytes but its replica was ${rec.sizeBytes} bytes; remove the replica's state to start over`);
    }
    if (!this.target) this.target = this.openTarget(open, sizeBytes, rec?.regionSize ?? this.regionSize);
    if (rec && this.failover) {
      // Promoted: the agent is back but its writes are only tracked until failback.
      rec.vm = vm;
      return rec;
    }
    if (!rec || !this.bitmap) {
      rec = {
        name: this.name, id: this.store.allocateVolumeId(), sizeBytes, regionSize: this.regionSize, generation: 0,
        state: 'syncing', cleanShutdown: false, syncPass: 0, syncCursor: 0, vm,
      };
      this.bitmap = new DirtyBitmap(sizeBytes, this.regionSize);
      this.bitmap.setAll(); // a new replica knows nothing: full initial sync
    } else if (!rec.cleanShutdown && !trustAgentReport) {
      // A legacy agent cannot tell us what it wrote while we were apart.
      this.bitmap.setAll();
    }
    rec.generation += 1;
    rec.cleanShutdown = false;
    rec.state = 'syncing';
    rec.vm = vm;
    this.record = rec;
    await this.store.saveBitmap(this.name, this.bitmap, true);
    await this.store.putVolume(rec, true);
    this.state = 'syncing';
    this.lastError = undefined;
    return rec;
  }

  /** Regions known to hold zeroes (a recovery volume this hub created sparse); null: none known. */
  private knownZero: KnownZeroMap | null = null;

  /**
   * The recovery volume's filter stack: the guard over change tracking over the file. A file
   * this hub creates starts known zero; every write below the guard clears what it touches.
   */
  private openTarget(open: TargetOpener, sizeBytes: number, regionSize: number): GuardedTarget {
    const existed = fs.existsSync(this.spec.path);
    const file = open(this.spec.path, sizeBytes);
    if (existed || !(file instanceof FileVolume)) return new GuardedTarget(file);
    this.knownZero = new KnownZeroMap(sizeBytes, regionSize);
    return new GuardedTarget(new TrackedTarget(file, this.knownZero));
  }

  /** Make regions [first, last] zero on the recovery volume, skipping those known zero. */
  async writeZeroes(first: number, last: number): Promise<void> {
    const rs = this.bitmap!.regionSize, size = this.bitmap!.sizeBytes;
    for (let r = first; r <= last; r++) await this.zeroBytes(r * rs, Math.min((r + 1) * rs, size));
  }

  /** Make bytes [a, b) zero on the recovery volume; nothing is written if every region they touch is known zero. */
  async zeroBytes(a: number, b: number): Promise<void> {
    if (this.knownZero?.covers(a, b)) return;
    await writeZeroes((buf, o) => this.target!.write(buf, o), a, b - a);
  }

  /** Open the recovery volume of a known replica without an agent (failover, failover test). */
  ensureTarget(open: TargetOpener): GuardedTarget {
    if (!this.record) throw new Error(`volume ${this.name} has never been protected: no replica to use`);
    if (!this.target) this.target = new GuardedTarget(open(this.spec.path, this.record.sizeBytes));
    return this.target;
  }

  /** Regions turned dirty are committed before the caller goes on. */
  async markDirty(first: number, last: number): Promise<void> {
    this.bitmap!.setRegions(first, last);
    await this.store.saveBitmap(this.name, this.bitmap!, true);
  }

  /** Commit bits set directly on the bitmap before the caller relies on them. */
  async commitDirty(): Promise<void> {
    await this.store.saveBitmap(this.name, this.bitmap!, true);
  }

  /** Flush data, then persist cleared bits and the record (lazily, superset-safe). */
  async checkpoint(): Promise<void> {
    if (!this.record || !this.bitmap) return;
    if (this.target) await this.target.flush();
    // Sync writes are large and leave large page-cache folios; 4 KiB protected writes into those
    // cost several times more kernel time (ext4). Once they are on disk, drop them.
    if (this.target && this.syncBytes !== this.syncBytesDropped) {
      this.syncBytesDropped = this.syncBytes;
      this.target.base.dropCache?.();
    }
    this.record.state = this.state;
    await this.store.saveBitmap(this.name, this.bitmap, false);
    await this.store.putVolume(this.record, false);
  }

  setState(s: ReplicaState): void {
    if (s === 'protecting') this.outOfSyncSince = null;
    else if (this.state === 'protecting' || this.outOfSyncSince === null) this.outOfSyncSince = Date.now();
    this.state = s;
    if (this.record) this.record.state = s;
  }

  /** RPO lag: protecting, the age of the oldest undurable write; otherwise time out of sync. */
  rpoLagMs(): number | null {
    if (this.state === 'protecting') return this.owner ? this.owner.rpoLagMs() : 0;
    return this.outOfSyncSince === null || !this.record ? null : Date.now() - this.outOfSyncSince;
  }

  sample(): void {
    const now = Date.now(), bytes = this.bytesApplied + this.syncBytes;
    if (now > this.sampled.at) this.throughputBps = Math.round(((bytes - this.sampled.bytes) * 1000) / (now - this.sampled.at));
    this.sampled = { at: now, bytes };
  }

  status() {
    const bm = this.bitmap;
    return {
      name: this.name,
      recovery: this.spec.path,
      state: this.state,
      volumeId: this.record?.id ?? null,
      generation: this.record?.generation ?? 0,
      vm: this.record?.vm ?? null,
      sizeBytes: this.record?.sizeBytes ?? 0,
      regionSize: this.record?.regionSize ?? this.regionSize,
      dirtyBytes: bm ? bm.dirtyBytes : 0,
      dirtyRegions: bm ? bm.dirtyRegions : 0,
      syncPass: this.record?.syncPass ?? 0,
      syncCursor: this.record?.syncCursor ?? 0,
      bytesApplied: this.bytesApplied,
      bytesDirect: (this.target?.base as { directBytes?: number } | undefined)?.directBytes ?? 0, // around the page cache
      writesApplied: this.writesApplied,
      syncBytes: this.syncBytes,
      rpoLagMs: this.rpoLagMs(),
      throughputBps: this.throughputBps,
      lastError: this.lastError ?? null,
      errors: this.errors,
      failoverTest: this.target?.view ? { keptBytes: this.target.view.keptBytes, activeBytes: this.target.view.activeBytes } : null,
      failover: this.failover ? {
        recoveryChangedBytes: this.failover.recoveryChanged.bitmap.dirtyBytes,
        protectedChangedBytes: this.failover.protectedChanged.bitmap.dirtyBytes,
      } : null,
    };
  }
}
