// The protected volumes as the agent knows them: name, image and dirty log, the index the other
// modules keep their per-volume state by, and the volume ids the hub assigned on this connection.
import type { BlockTarget } from '../../storage/volume';
import type { DirtyLog } from '../../storage/dirty-log';

export interface AgentVolumeSpec {
  name: string;
  target: BlockTarget;
  log: DirtyLog;
}

export class AgentVolume {
  constructor(
    readonly index: number,
    readonly spec: AgentVolumeSpec,
  ) {}

  get name(): string {
    return this.spec.name;
  }
  get target(): BlockTarget {
    return this.spec.target;
  }
  get log(): DirtyLog {
    return this.spec.log;
  }
  get sizeBytes(): number {
    return this.spec.target.sizeBytes;
  }

  checkRange(start: number, end: number): void {
    if (start < 0 || end > this.sizeBytes || end <= start) {
      throw new RangeError(`IO [${start}, ${end}) outside ${this.name} (${this.sizeBytes} bytes)`);
    }
  }
}

/** The volume list, and the hub's volume ids: assigned by START_PROTECT, forgotten on close. */
export class VolumeTable {
  readonly list: readonly AgentVolume[];
  private readonly byName = new Map<string, AgentVolume>();
  private readonly byHubId = new Map<number, AgentVolume>();
  private readonly hubIds: number[]; // by index; -1 while not protected on this connection
  private readonly removed = new Set<AgentVolume>(); // the hub stopped them (STOP_PROTECT) on this connection

  constructor(specs: AgentVolumeSpec[]) {
    this.list = specs.map((s, i) => new AgentVolume(i, s));
    for (const v of this.list) this.byName.set(v.name, v);
    this.hubIds = this.list.map(() => -1);
  }

  /** The volume called `name`; throws for a name the agent does not serve. */
  named(name: string): AgentVolume {
    const v = this.byName.get(name);
    if (!v) throw new Error(`no protected volume ${name}`);
    return v;
  }

  find(name: string): AgentVolume | undefined {
    return this.byName.get(name);
  }

  withHubId(volumeId: number): AgentVolume | undefined {
    return this.byHubId.get(volumeId);
  }

  /** The hub's id for `v` on this connection, -1 while it is not protected. */
  hubId(v: AgentVolume): number {
    return this.hubIds[v.index];
  }

  protect(v: AgentVolume, volumeId: number): void {
    this.hubIds[v.index] = volumeId;
    this.byHubId.set(volumeId, v);
  }

  /** The hub stopped protecting `v` (STOP_PROTECT): unprotected, and not reported again on this connection. */
  unprotect(v: AgentVolume): void {
    this.byHubId.delete(this.hubIds[v.index]);
    this.hubIds[v.index] = -1;
    this.removed.add(v);
  }

  isRemoved(v: AgentVolume): boolean {
    return this.removed.has(v);
  }

  /** The connection closed: ids are per connection. */
  reset(): void {
    this.removed.clear();
    this.byHubId.clear();
    this.hubIds.fill(-1);
  }
}
