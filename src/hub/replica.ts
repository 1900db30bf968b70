// A recovery volume on the hub: the single owner of its target, record and dirty bitmap, its
// state machine (every change goes through setState and is logged there), its statistics and
// its one owner (the agent session that has it attached). Sessions borrow it while attached.
// Over 450 lines on purpose: what is left here changes the replica's private state (state
// machine, health flags, checksum-resync flag, the operator's hold, an online grow), and each
// move out would expose that state to a second writer. The next seam, if it grows: the health
// flags (writeOk, flushOk, error) as a small class of their own. What only reads it, or owns a
// part of its own, lives beside it: replica-open.ts (the open and what it learns: seeded,
// known zeroes, the RBD claim), replica-spec.ts, replica-stats.ts, replica-status.ts,
// replica-identity.ts, failover-maps.ts, alarm-reader.ts.
import { BlockTarget, writeZeroes } from '../../storage/volume';
import type { GuardedTarget } from '../../storage/overlay';
import { DirtyBitmap } from '../../storage/bitmap';
import { ChecksumResyncRecord, StateStore, VolumeRecord } from '../../storage/state';
import type { Logger } from '../log';
import { assert } from '../assert';
import { EncryptionAlarm } from './encryption-alarm';
import { AlarmReader } from './alarm-reader';
import { ReplicaStats } from './replica-stats';
import { replicaStatus } from './replica-status';
import { newChecksumResync, peerChange, recoveryFileChange, recoveryFileNow } from './replica-identity';
import { isRbdPath, releaseImage } from './rbd-target';
import { freshRecord, RecoveryOpening } from './replica-open';

import type { ReplicaState, VolumeHold } from './replica-state';
export type { ReplicaState, VolumeHold } from './replica-state';

import type { FailbackWatcher, FailoverMaps } from './failover-maps';
export type { FailbackWatcher, FailoverMaps } from './failover-maps';
import { growRecoveryFile, type ReplicaSpec, type TargetOpener } from './replica-spec';
export { openDirectTarget, openFileTarget, type ReplicaSpec, type TargetOpener } from './replica-spec';

/** What the hub asks of the agent session that has a replica attached. */
export interface ReplicaOwner {
  readonly vm: string;
  /** The agent process's instance id (cap IDENTITY), null without it; and its address. */
  readonly instance: string | null;
  readonly peer: string;
  fail(e: Error): void;
  /** Set while its transport is gone and what it delivered is applied; resolves once it let go. */
  readonly ending: Promise<void> | null;
  /** Age of the oldest write received but not yet durable on the recovery volume. */
  rpoLagMs(): number;
  /** Run `fn` at the current point of the VM's write stream (see ApplyQueue.barrier). */
  barrier<T>(fn: () => Promise<T> | T): Promise<T>;
  /** The points of the stream the agent vouches for (SPEC.md 7.4): asked for, or at its next marker. */
  readonly points: import('./point-request').PointRequests;
  /** Failback: write `regions` of the recovery volume to the protected volume; the bytes moved. */
  writeBack(replica: Replica, regions: DirtyBitmap, watch: FailbackWatcher): Promise<number>;
  /** Issue remote reads for what is dirty now. */
  pump(): void;
}

export class Replica {
  record?: VolumeRecord;
  target?: GuardedTarget;
  failover: FailoverMaps | null = null; // set while the replica is promoted (replica-failover.ts)
  /** A filter put between the guard and the file (the journal's capture, src/hub/journal.ts). */
  targetFilter?: (t: BlockTarget) => BlockTarget;
  private readonly filtered = (t: BlockTarget): BlockTarget => (this.targetFilter ? this.targetFilter(t) : t);
  bitmap?: DirtyBitmap;
  readonly stats = new ReplicaStats();
  /** Scores protected writes for a guest that starts encrypting its disk (ticked by sample()). */
  readonly alarm: EncryptionAlarm;
  /** Reads what a sampled write overwrites, inline (alarm-reader.ts). */
  readonly alarmReader: AlarmReader;
  /** Paused or removed by the operator (volume-ops.ts, volume-set.ts); null while replicating. */
  hold: VolumeHold | null = null;
  private current: ReplicaState = 'unprotected';
  private holder: ReplicaOwner | null = null; // the session that has it attached (or is attaching it)
  private released: Promise<void> = Promise.resolve(); // the last owner's in-progress apply
  private outOfSyncSince: number | null = Date.now(); // null while protecting
  private error?: string;
  private writeOk = true; // the last write to the recovery volume succeeded
  private flushOk = true; // ... and its last flush: no retry out of error before both
  /** The open of the recovery volume, and what it learnt: seeded, known zeroes, RBD claim. */
  private readonly opening: RecoveryOpening;

  constructor(
    readonly spec: ReplicaSpec,
    private readonly store: StateStore,
    private readonly regionSize: number,
    readonly log: Logger,
  ) {
    this.alarmReader = new AlarmReader(spec.path, 4096);
    this.alarm = new EncryptionAlarm(undefined, (active, start, rateBps) => this.alarmChanged(active, start, rateBps));
    this.opening = new RecoveryOpening(spec.path, this.filtered, (reason) => this.checkIdentity(reason));
    const rec = store.volume(spec.name);
    // Removed by the operator, configured again: a new replica over the kept file (seeded: compared first).
    if (rec?.removed) log.warn({ volume: spec.name }, 'volume was removed from protection; protecting it anew');
    if (rec && !rec.removed) {
      this.record = rec;
      this.bitmap = new DirtyBitmap(rec.sizeBytes, rec.regionSize);
      this.bitmap.holdClearsUntilFlush();
      store.loadBitmap(spec.name, this.bitmap);
      this.bitmap.takeChangedPages();
      this.current = rec.cleanShutdown ? 'stopped' : 'degraded';
      if (rec.paused) [this.hold, this.current] = ['paused', 'paused'];
      this.checkIdentity(recoveryFileChange(rec, spec.path));
    }
  }

  /** An identity comparison found `reason`: logged once here, and the volume resynced by checksums. */
  private checkIdentity(reason: string | null): void {
    if (reason === null) return;
    this.log.error(
      { volume: this.name, recovery: this.spec.path, reason },
      'recovery volume cannot be proven equal to the protected volume; checksum resync',
    );
    this.beginChecksumResync(reason);
  }

  get state(): ReplicaState {
    return this.current;
  }

  /** The agent session that has this replica attached, or is attaching it. */
  get owner(): ReplicaOwner | null {
    return this.holder;
  }

  /** Resolves when the last owner's in-progress apply has finished. */
  get idle(): Promise<void> {
    return this.released;
  }

  /** The last write to the recovery volume succeeded, and so did its last flush. */
  get lastWriteOk(): boolean {
    return this.writeOk && this.flushOk;
  }

  /** The last flush failed: nothing written since is trusted until one succeeds (flushRecovery). */
  get flushFailed(): boolean {
    return !this.flushOk;
  }

  get name(): string {
    return this.spec.name;
  }

  /**
   * Open (or create) the recovery volume for an agent reporting `sizeBytes`, and work out what
   * must be resynced. `trustAgentReport`: the agent will report its own dirty extents.
   */
  async attach(
    sizeBytes: number,
    open: TargetOpener,
    trustAgentReport: boolean,
    vm: string,
    lineage: Buffer[] | null = null,
  ): Promise<VolumeRecord> {
    let rec = this.record;
    if (rec && rec.sizeBytes !== sizeBytes) {
      throw new Error(
        `protected volume ${this.name} is now ${sizeBytes} bytes but its replica was ${rec.sizeBytes} bytes; remove the replica's state to start over`,
      );
    }
    if (!this.target) this.target = await this.opening.stack(open, sizeBytes, rec?.regionSize ?? this.regionSize, rec);
    if (rec && this.failover) {
      // Promoted: the agent is back but its writes are only tracked until failback.
      rec.vm = vm;
      return rec;
    }
    if (rec) this.checkIdentity(peerChange(rec, lineage));
    if (!rec || !this.bitmap) {
      rec = freshRecord(this.name, this.store.allocateVolumeId(), sizeBytes, this.regionSize, vm);
      this.bitmap = new DirtyBitmap(sizeBytes, this.regionSize);
      this.bitmap.holdClearsUntilFlush();
      this.bitmap.setAll(); // a new replica knows nothing: full initial sync
      // A file that already held data (a backup, an earlier copy, lost hub state): compare, never copy blindly.
      if (this.opening.seeded) rec.checksumResync = newChecksumResync('seeded replica: the recovery volume held data');
    } else if (!rec.cleanShutdown && (!trustAgentReport || rec.untrustedSession)) {
      // A legacy agent cannot tell us what it wrote while we were apart, and after a legacy
      // session ended uncleanly no agent can: its writes are in nobody's dirty log.
      this.bitmap.setAll();
    }
    rec.generation += 1;
    rec.cleanShutdown = false;
    rec.untrustedSession = !trustAgentReport; // durable below, before any write is applied
    rec.state = 'syncing';
    rec.vm = vm;
    if (lineage) rec.peerUuid = lineage[0].toString('hex'); // durable below, after the bitmap
    rec.recoveryFile = recoveryFileNow(this.spec.path, false); // written from now on: inexact
    if (this.opening.claimToken) rec.rbdClaim = this.opening.claimToken; // durable below, before any write
    this.record = rec;
    await this.store.saveBitmap(this.name, this.bitmap, true);
    await this.store.putVolume(rec, true);
    this.error = undefined;
    this.setState('syncing');
    return rec;
  }

  /** Every region [a, b) touches is known zero (never written on a replica this hub created). */
  knownZeroCovers(a: number, b: number): boolean {
    return this.opening.covers(a, b);
  }

  /** Make bytes [a, b) zero on the recovery volume; nothing is written if every region they touch is known zero. */
  async zeroBytes(a: number, b: number): Promise<void> {
    if (this.opening.covers(a, b)) return;
    await writeZeroes((buf, o) => this.target!.write(buf, o), a, b - a);
  }

  /** Open the recovery volume of a known replica without an agent (failover, failover test). */
  async ensureTarget(open: TargetOpener): Promise<GuardedTarget> {
    if (!this.record) throw new Error(`volume ${this.name} has never been protected: no replica to use`);
    if (!this.target) {
      // the journal's capture too: a promoted volume's writes must keep the older points right
      this.target = await this.opening.bare(open, this.record);
      this.record.recoveryFile = recoveryFileNow(this.spec.path, false); // written from now on: inexact
      void this.store.putVolume(this.record, true);
    }
    return this.target;
  }

  /** The running checksum resync (the volume syncs by comparing digests first), or null. */
  get checksumResync(): ChecksumResyncRecord | null {
    const c = this.record?.checksumResync;
    return c && c.finishedAt === null ? c : null;
  }

  /**
   * The hub cannot vouch for the recovery volume's data (seeded elsewhere, an identity that
   * differs): every region is compared by checksum before data moves. The flag and the bits
   * are committed before this returns (both stores write synchronously when durable).
   */
  beginChecksumResync(reason: string): void {
    const rec = this.record,
      bm = this.bitmap;
    assert(rec !== undefined && bm !== undefined, 'a checksum resync is of a replica with a record');
    rec.checksumResync = newChecksumResync(reason);
    bm.setAll();
    this.opening.forget(0, bm.regions - 1); // the data is not what the hub wrote
    const failed = (e: Error) => {
      this.noteError(`cannot persist the checksum resync: ${e.message}`);
      this.log.error({ volume: this.name, cause: e.message }, 'cannot persist the checksum resync');
    };
    void this.store.saveBitmap(this.name, bm, true).catch(failed);
    void this.store.putVolume(rec, true).catch(failed);
    this.log.warn(
      { volume: this.name, recovery: this.spec.path, reason, dirtyBytes: bm.dirtyBytes },
      'checksum resync: every region is compared with the protected volume; only what differs is copied',
    );
    if (this.current === 'protecting') this.setState('syncing');
    this.holder?.pump(); // an attached session compares at once
  }

  /** Bytes compared by digest (`matched` of them equal), or read, during the checksum resync. */
  recordChecksumResync(compared: number, matched: number, moved: number): void {
    const c = this.checksumResync;
    if (!c) return;
    c.comparedBytes += compared;
    c.matchedBytes += matched;
    c.movedBytes += moved;
    this.stats.checksumCompared += compared;
    this.stats.checksumMoved += moved;
  }

  /** The bitmap is clean: the checksum resync is done (persisted with the next checkpoint). */
  endChecksumResync(): void {
    const c = this.checksumResync;
    if (!c) return;
    assert(this.bitmap!.dirtyRegions === 0, 'a checksum resync ends with a clean bitmap');
    c.finishedAt = new Date().toISOString();
    this.log.info(
      { volume: this.name, comparedBytes: c.comparedBytes, matchedBytes: c.matchedBytes, movedBytes: c.movedBytes },
      'checksum resync done',
    );
  }

  /** Regions turned dirty are on disk before the caller goes on; other sessions run meanwhile. */
  async markDirty(first: number, last: number): Promise<void> {
    this.bitmap!.setRegions(first, last);
    await this.store.saveBitmap(this.name, this.bitmap!, 'flushed');
  }

  /** Verify found regions [first, last] different: dirty, and no longer trusted to be zero. */
  async markDiffering(first: number, last: number): Promise<void> {
    this.opening.forget(first, last);
    await this.markDirty(first, last);
  }

  /** Bits set directly on the bitmap are on disk before the caller relies on them (as markDirty). */
  async commitDirty(): Promise<void> {
    await this.store.saveBitmap(this.name, this.bitmap!, 'flushed');
  }

  /**
   * Flush data, then persist cleared bits and the record (lazily, superset-safe). A failed flush
   * is a group commit's failure too (flushRecovery): a direct write failing in flight surfaces at
   * the next flush, and a later good one must not release its region's clear.
   */
  async checkpoint(): Promise<void> {
    if (!this.record || !this.bitmap) return;
    if (this.target) await this.flushRecovery();
    // Sync writes are large and leave large page-cache folios; 4 KiB protected writes into those
    // cost several times more kernel time (ext4). Once they are on disk, drop them.
    if (this.target && this.flushOk && this.stats.synced !== this.stats.syncedAtDrop) {
      this.stats.syncedAtDrop = this.stats.synced;
      this.target.base.dropCache?.();
    }
    this.record.state = this.current;
    await this.store.saveBitmap(this.name, this.bitmap, false);
    await this.store.putVolume(this.record, false);
  }

  /**
   * The one way the state changes; logged here, once. Entering protecting persists the
   * converged bitmap at once, so a crash right after costs no resync of it.
   */
  setState(to: ReplicaState): void {
    if (this.hold === 'paused' && to !== 'failed-over' && to !== 'error') to = 'paused'; // until resumed
    const from = this.current;
    if (from === to) return;
    if (to === 'protecting') this.outOfSyncSince = null;
    else if (from === 'protecting' || this.outOfSyncSince === null) this.outOfSyncSince = Date.now();
    this.current = to;
    if (this.record) this.record.state = to;
    this.log.info({ volume: this.name, from, to, dirtyBytes: this.bitmap?.dirtyBytes ?? 0 }, 'volume state');
    this.onState?.(from, to);
    if (to === 'protecting') {
      void this.checkpoint().catch((e) => this.log.warn({ volume: this.name, cause: e.message }, 'checkpoint failed'));
    }
  }

  /**
   * The operator pauses (`hold` 'paused'), resumes (null) or removes the volume; the record says
   * so durably before this returns (a paused volume stays paused across a hub restart).
   */
  async setHold(hold: VolumeHold | null): Promise<void> {
    const rec = this.record;
    this.hold = hold;
    if (rec) {
      Object.assign(rec, { paused: hold === 'paused' || undefined, removed: hold === 'removed' || undefined });
      await this.store.putVolume(rec, true);
    }
    if (hold === 'paused') return this.setState('paused');
    if (hold === null) this.setState(this.holder ? 'syncing' : rec?.cleanShutdown ? 'stopped' : 'degraded');
  }

  /**
   * The protected volume grew (an online resize, volume-resize.ts, applied in stream order):
   * the recovery file, the bitmap and the record grow, and only the new regions (with the old
   * last one, if it was partial) turn dirty, durably before the record names the new size.
   */
  async grow(sizeBytes: number, open: TargetOpener): Promise<void> {
    const rec = this.record!,
      bm = this.bitmap!,
      firstNew = bm.regionOf(rec.sizeBytes);
    assert(sizeBytes > rec.sizeBytes && !isRbdPath(this.spec.path), 'a file replica with a record grows');
    await this.checkpoint(); // flushed: the old stack closes with no clear held
    await this.target?.close();
    growRecoveryFile(this.spec.path, sizeBytes);
    bm.grow(sizeBytes);
    bm.setRegions(firstNew, bm.regions - 1);
    await this.store.saveBitmap(this.name, bm, true);
    rec.sizeBytes = sizeBytes;
    this.opening.resized(); // the map was sized for the old volume
    await this.store.putVolume(rec, true);
    this.target = await this.opening.stack(open, sizeBytes, rec.regionSize, rec);
    this.setState('syncing');
  }

  /** An agent session takes the replica; the previous owner has released it (or been failed). */
  claim(owner: ReplicaOwner): void {
    assert(this.holder === null, 'a replica has one owner at a time');
    this.holder = owner;
  }

  /** `owner` lets go (attach failed: nothing else to do). */
  release(owner: ReplicaOwner): void {
    if (this.holder === owner) this.holder = null;
  }

  /**
   * `owner`'s connection is gone. Once what it was applying (`inFlight`) has finished, the
   * replica is degraded unless the agent shut down cleanly; its dirty bits stay.
   */
  detach(owner: ReplicaOwner, inFlight: Promise<void>, cleanShutdown: boolean): void {
    if (this.holder !== owner) return;
    this.holder = null;
    this.released = inFlight.then(async () => {
      if (!cleanShutdown && this.record && this.current !== 'degraded' && !this.failover) this.setState('degraded');
      await this.checkpoint().catch(() => undefined);
      // An RBD image nobody here uses any more (no agent, failover or test view) is closed,
      // releasing its exclusive lock: the agent may have moved to another hub, which must take
      // it. The next attach opens and claims it again. One still open (IO in flight) is kept.
      const t = this.target;
      if (!t || !isRbdPath(this.spec.path) || this.holder || this.failover || t.view) return;
      this.target = undefined;
      if (!(await releaseImage(t, this.log, this.name, this.spec.path))) this.target ??= t;
    });
  }

  /** The agent shut down cleanly: nothing to resync next time it attaches. */
  async stopCleanly(): Promise<void> {
    this.record!.cleanShutdown = true;
    this.setState('stopped');
    await this.checkpoint();
  }

  /** A new generation of the data (failover, failback), durable before the caller goes on. */
  async newGeneration(): Promise<number> {
    const rec = this.record!;
    rec.generation += 1;
    await this.store.putVolume(rec, true);
    return rec.generation;
  }

  /** A protected write of `bytes` reached the recovery volume. */
  recordApplied(bytes: number): void {
    this.stats.applied += bytes;
    this.stats.appliedWrites++;
    this.writeOk = true;
  }

  /** Sync data of `bytes` reached the recovery volume. */
  recordSyncBytes(bytes: number): void {
    this.stats.synced += bytes;
    this.writeOk = true;
  }

  /** Something failed that the operator should see (attach refused, flush failed). */
  noteError(cause: string): void {
    this.error = cause;
  }

  /** A failure that counts in the error statistics (a failed remote read). */
  recordFault(cause: string): void {
    this.error = cause;
    this.stats.faults++;
  }

  /** The recovery volume failed a write (ENOSPC, EIO): keep the regions dirty, go to error. */
  async writeFailed(cause: string, offset: number, first: number, last: number): Promise<void> {
    this.recordFault(cause);
    this.writeOk = false;
    this.log.error(
      { volume: this.name, recovery: this.spec.path, offset, cause },
      'recovery volume write failed; regions stay dirty',
    );
    await this.markDirty(first, last);
    this.setState('error');
  }

  /** The recovery volume took a write again after errors: resync what failed. */
  retryAfterError(): void {
    assert(this.current === 'error' && this.writeOk, 'a retry follows an error and a successful write');
    this.log.info({ volume: this.name }, 'recovery volume writable again; resyncing what failed');
    this.error = undefined;
    this.setState('syncing');
  }

  /**
   * Flush the recovery volume for a group commit. A failure is this volume's alone, as a write
   * fault is: what was written since the last good flush may be gone (the page cache may drop
   * it), so the whole volume turns dirty, durably, before the commit acks; the volume goes to
   * error and resyncs once it takes writes again. The session and its other volumes go on.
   */
  async flushRecovery(): Promise<void> {
    try {
      await this.flushTarget();
    } catch (e) {
      const cause = (e as Error).message;
      this.recordFault(cause);
      this.flushOk = false;
      this.log.error(
        { volume: this.name, recovery: this.spec.path, offset: 0, cause },
        'flush of recovery volume failed; the whole volume is resynced once it takes writes again',
      );
      const bm = this.bitmap!;
      await this.markDirty(0, bm.regions - 1); // an LMDB failure here still fails the session
      this.setState('error');
    }
  }

  /** Flush the recovery volume; the bits cleared before it began may then be persisted clean. */
  private async flushTarget(): Promise<void> {
    const bm = this.bitmap,
      epoch = bm?.beginFlush() ?? 0;
    await this.target!.flush();
    this.flushOk = true;
    bm?.flushed(epoch);
  }

  /** RPO lag: protecting, the age of the oldest undurable write; otherwise time out of sync. */
  rpoLagMs(): number | null {
    if (this.current === 'protecting') return this.holder ? this.holder.rpoLagMs() : 0;
    return this.outOfSyncSince === null || !this.record ? null : Date.now() - this.outOfSyncSince;
  }

  /** Told of every state change, after it is made (the hub's event bus). */
  onState: ((from: ReplicaState, to: ReplicaState) => void) | null = null;

  /** Told when the encryption alarm rises or ends (the journal tags the last clean point). */
  onAlarm: ((active: boolean, start: number) => void) | null = null;

  private alarmChanged(active: boolean, start: number, rateBps: number): void {
    const ctx = { volume: this.name, vm: this.record?.vm, since: new Date(start).toISOString(), rateBps };
    if (active) this.log.error(ctx, 'encryption alarm: the guest is overwriting its data with random-looking bytes');
    else this.log.warn(ctx, 'encryption alarm ended: overwrites with random-looking bytes back to normal');
    this.onAlarm?.(active, start);
  }

  sample(): void {
    const now = Date.now();
    this.stats.sample(now);
    this.alarm.tick(now);
  }

  status(): ReturnType<typeof replicaStatus> {
    return replicaStatus(this, this.record?.regionSize ?? this.regionSize, this.error ?? null);
  }

  /** Hub stopping cleanly, the recovery file closed: its fingerprint is exact now. */
  async saveCleanIdentity(): Promise<void> {
    if (!this.record) return;
    const now = recoveryFileNow(this.spec.path, true);
    if (!now) return;
    this.record.recoveryFile = now;
    await this.store.putVolume(this.record, true);
  }
}
