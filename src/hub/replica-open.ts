// Opening a recovery volume: its filter stack (the guard over the journal's filter over change
// tracking over the file or image) and what the open learns of its content. This owns those
// facts: whether the volume held data already (seeded: the hub cannot vouch for it), which
// regions are known zero (a file this hub created sparse), and the claim token this hub wrote
// into an RBD image. The replica (replica.ts) asks them; only the open and a forget set them.
import * as fs from 'node:fs';
import { BlockTarget, FileVolume } from '../../storage/volume';
import { GuardedTarget } from '../../storage/overlay';
import { KnownZeroMap, TrackedTarget } from '../../storage/tracking';
import type { VolumeRecord } from '../../storage/state';
import { isRbdPath, openClaimed } from './rbd-target';
import type { TargetOpener } from './replica-spec';

export class RecoveryOpening {
  private knownZero: KnownZeroMap | null = null;
  private heldData = false;
  private token: string | undefined;

  constructor(
    private readonly path: string,
    /** The filter put between the guard and the file (the journal's capture), if any. */
    private readonly filtered: (t: BlockTarget) => BlockTarget,
    /** An identity comparison at the open found `reason` (an RBD image another hub wrote). */
    private readonly identityChanged: (reason: string | null) => void,
  ) {}

  /** The recovery volume existed with data when it was opened: the hub cannot vouch for it. */
  get seeded(): boolean {
    return this.heldData;
  }

  /** The claim token this hub wrote into its RBD image (rbd-target.ts), for the record. */
  get claimToken(): string | undefined {
    return this.token;
  }

  /**
   * The whole stack for an agent's volume. A file this open creates starts known zero, and
   * every write below the guard clears what it touches.
   */
  async stack(open: TargetOpener, sizeBytes: number, regionSize: number, rec?: VolumeRecord): Promise<GuardedTarget> {
    const rbd = isRbdPath(this.path);
    const existed = !rbd && fs.existsSync(this.path);
    const file = await this.base(open, sizeBytes, rec);
    // An existing file with no data extents (all holes) holds nothing to vouch for.
    if (!rbd)
      this.heldData = existed && (!(file instanceof FileVolume) || file.dataExtents(0, sizeBytes)?.length !== 0);
    // An image not seeded (base(): this open created it, unclaimed till our lock) holds zeroes.
    const fresh = rbd ? !this.heldData : file instanceof FileVolume ? !existed : file.createdEmpty === true;
    if (!fresh) return new GuardedTarget(this.filtered(file));
    this.knownZero = new KnownZeroMap(sizeBytes, regionSize);
    return new GuardedTarget(this.filtered(new TrackedTarget(file, this.knownZero)));
  }

  /** The stack of a known replica opened without an agent (failover, failover test): no tracking. */
  async bare(open: TargetOpener, rec: VolumeRecord): Promise<GuardedTarget> {
    return new GuardedTarget(this.filtered(await this.base(open, rec.sizeBytes, rec)));
  }

  /** Every region [a, b) touches is known zero (never written on a replica this hub created). */
  readonly covers = (a: number, b: number): boolean => this.knownZero?.covers(a, b) ?? false;

  /** Regions [first, last] may hold anything now (a checksum resync, a verify mismatch). */
  forget(first: number, last: number): void {
    this.knownZero?.forget(first, last);
  }

  /** The volume grew: the map was sized for the old one, and the reopened file is not new. */
  resized(): void {
    this.knownZero = null;
  }

  /**
   * Open the volume. An RBD image is claimed for the record before anything is written
   * (rbd-target.ts): one this open did not create may hold anything (seeded), and another hub's
   * writes since the record's claim (a takeover) mean a checksum resync.
   */
  private async base(open: TargetOpener, sizeBytes: number, rec?: VolumeRecord): Promise<BlockTarget> {
    const o = await openClaimed(open, this.path, sizeBytes, rec);
    if (!o.claim) return o.target;
    // created by this open, yet claimed by another hub before our lock: it wrote there, compare first
    this.heldData = !o.claim.created || o.claim.found !== null;
    this.token = o.claim.token;
    if (rec) rec.rbdClaim = o.claim.token;
    this.identityChanged(o.claim.reason);
    return o.target;
  }
}

/** The record of a replica new to this hub: everything dirty, nothing vouched for yet. */
export function freshRecord(name: string, id: number, sizeBytes: number, regionSize: number, vm: string): VolumeRecord {
  return {
    name,
    id,
    sizeBytes,
    regionSize,
    generation: 0,
    state: 'syncing',
    cleanShutdown: false,
    syncPass: 0,
    syncCursor: 0,
    vm,
  };
}
