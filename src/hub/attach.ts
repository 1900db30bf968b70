// Volume attach and authorization for one agent session: which reported volumes it may protect
// (binding to a VM, one owner at a time, a reconnect of the same VM taking over, sizes), the
// attach itself, and letting go of every claimed replica when the session ends. With cap
// IDENTITY, a volume held by a live session of another agent process (same VM name: a cloned
// host) is refused, not taken over; a reconnect of the same process still takes over.
import { Cmd, ErrorCode, SECTOR, encodeError, encodeStartProtect } from '../../protocol';
import type { ReportVmVolumes } from '../../protocol';
import type { Logger } from '../log';
import type { Replica, ReplicaOwner, TargetOpener } from './replica';
import { VolumeSync } from './sync';

export interface AttachHost {
  /** The session, as the replicas it claims see it. */
  readonly owner: ReplicaOwner;
  replica(name: string): Replica | undefined;
  openTarget: TargetOpener;
  send(bufs: Buffer[]): void;
  isClosed(): boolean;
  /** A volume is attached: it joins the sync engine. */
  attached(sync: VolumeSync): void;
  /** The volume's identity lineage from the agent's IDENTITY (current UUID first); null without one. */
  lineage(name: string): Buffer[] | null;
}

type Reported = ReportVmVolumes['volumes'][number];

const MAX_UNKNOWN = 1024; // reported names without a recovery volume kept per session

export class VolumeAttach {
  private readonly claimed = new Set<Replica>(); // replicas this session owns (attached or attaching)
  /** Reported volumes the hub had no recovery volume for, kept to offer one added later (volume-set.ts). */
  private readonly unknown = new Map<string, Reported>();
  private readonly reported = new Map<string, Reported>(); // as the agent reported them, for a re-add

  constructor(
    private readonly host: AttachHost,
    private readonly log: Logger, // the session's: it names the session
  ) {}

  /** REPORT_VM_VOLUMES from VM `vm`; `trust`: the agent will hand over its own dirty extents. */
  async report(m: ReportVmVolumes, vm: string, trust: boolean): Promise<void> {
    for (const v of m.volumes) {
      if (this.reported.size < MAX_UNKNOWN) this.reported.set(v.name, v);
      if (this.host.isClosed()) return; // an ended session applying its last frames attaches nothing
      // Another session that ended and still applies what it received (a reconnect raced it)
      // lets go first. It never waits here itself (closed: above), so no two wait on each other.
      const owner = this.host.replica(v.name)?.owner;
      if (owner && owner !== this.host.owner && owner.ending) await owner.ending;
      if (this.host.isClosed()) return;
      const rep = this.authorize(v, vm);
      if (!rep) continue;
      if (!(await this.attach(rep, v, vm, trust))) return;
    }
  }

  /** A volume `name` was added to the hub: attach it if this agent reported it; true if it did. */
  async offer(name: string, vm: string, trust: boolean): Promise<boolean> {
    const v = this.unknown.get(name);
    if (!v || this.host.isClosed()) return false;
    this.unknown.delete(name);
    this.log.info({ vm, volume: name }, 'offering the added volume to the connected agent');
    await this.report({ cmd: Cmd.REPORT_VM_VOLUMES, volumes: [v] }, vm, trust);
    return this.claimed.has(this.host.replica(name)!);
  }

  /** The operator removed `rep` (volume-set.ts): this session no longer owns it. */
  forget(rep: Replica): void {
    rep.release(this.host.owner);
    this.claimed.delete(rep);
    // The agent still has the volume (and logs its writes): a later add offers it again.
    const v = this.reported.get(rep.name);
    if (v && this.unknown.size < MAX_UNKNOWN) this.unknown.set(v.name, v);
  }

  /** The session ended: each claimed replica degrades (unless `clean`) once `inFlight` is done. */
  release(inFlight: Promise<void>, clean: boolean): Promise<unknown> {
    for (const rep of this.claimed) rep.detach(this.host.owner, inFlight, clean);
    return Promise.all([...this.claimed].map((r) => r.idle));
  }

  /** The replica `v` names if this session may take it now; refusals are answered here. */
  private authorize(v: Reported, vm: string): Replica | null {
    const rep = this.host.replica(v.name),
      me = this.host.owner;
    const ctx = { vm, volume: v.name, sizeBytes: v.sizeBytes }; // the session is in the logger
    if (!rep) {
      // Answered, not ignored (SPEC.md 5.3): an agent waiting for START_PROTECT would wait forever.
      this.log.warn(ctx, 'agent reported a volume the hub has no recovery volume for; refused');
      if (this.unknown.size < MAX_UNKNOWN) this.unknown.set(v.name, v);
      this.refuse(ErrorCode.VOLUME_REFUSED, `volume ${v.name}: the hub has no recovery volume of that name`);
      return null;
    }
    if (rep.spec.vm && rep.spec.vm !== vm) {
      this.log.error({ ...ctx, boundTo: rep.spec.vm }, 'volume is bound to another VM; refused');
      this.refuse(ErrorCode.UNAUTHORIZED, `volume ${v.name} may only be protected by VM ${rep.spec.vm}`);
      return null;
    }
    const held = rep.owner;
    if (held && held !== me && held.instance && me.instance && held.instance !== me.instance) {
      // Two live agent processes claim it (cloned hosts, same --vm): the holder keeps it.
      const holder = `held by another live agent ${held.instance}, connected from ${held.peer}`;
      this.log.warn(
        { ...ctx, instance: me.instance, holder: held.instance, holderPeer: held.peer },
        `volume ${holder}; refused`,
      );
      this.refuse(ErrorCode.VOLUME_REFUSED, `volume ${v.name}: ${holder}`);
      return null;
    }
    if (held && held !== me && vm !== '' && held.vm === vm) {
      // The same VM reconnected before the hub noticed its old connection die: take over.
      this.log.warn(ctx, 'volume held by an older session of the same VM; replacing it');
      held.fail(new Error(`replaced by a new connection from VM ${vm}`)); // releases it at once
    }
    if (rep.owner && rep.owner !== me) {
      this.log.error(ctx, 'volume is already protected by another agent session; refused');
      this.refuse(ErrorCode.VOLUME_REFUSED, `volume ${v.name} is already protected by another agent`);
      return null;
    }
    if (rep.owner === me) return null;
    if (me.instance && !this.host.lineage(v.name)) {
      this.refuse(ErrorCode.VOLUME_REFUSED, `volume ${v.name}: not named in the agent's IDENTITY`);
      return null;
    }
    if (v.sizeBytes % SECTOR !== 0 || v.sizeBytes === 0) {
      this.refuse(ErrorCode.VOLUME_REFUSED, `volume ${v.name}: size ${v.sizeBytes} is not a positive multiple of 512`);
      return null;
    }
    return rep;
  }

  /** Claim and attach `rep`; false when the session closed meanwhile (stop handling the report). */
  private async attach(rep: Replica, v: Reported, vm: string, trust: boolean): Promise<boolean> {
    const ctx = { vm, volume: v.name, sizeBytes: v.sizeBytes }; // the session is in the logger
    rep.claim(this.host.owner);
    this.claimed.add(rep);
    await rep.idle; // a previous session's last apply must land first
    if (this.host.isClosed()) return false;
    try {
      const rec = await rep.attach(v.sizeBytes, this.host.openTarget, trust, vm, this.host.lineage(v.name));
      if (this.host.isClosed()) return false;
      const sync = new VolumeSync(rep, rec.id, trust);
      this.log.info(
        {
          ...ctx,
          volumeId: rec.id,
          generation: rec.generation,
          dirtyBytes: rep.bitmap!.dirtyBytes,
          recovery: rep.spec.path,
        },
        'protection started',
      );
      this.host.attached(sync);
      this.host.send([encodeStartProtect(rec.id, v.name)]);
      sync.settle(); // nothing to resync (e.g. legacy agent after a clean shutdown)
    } catch (e) {
      rep.release(this.host.owner);
      this.claimed.delete(rep);
      rep.noteError((e as Error).message);
      this.log.error({ ...ctx, cause: (e as Error).message }, 'cannot protect volume');
      this.refuse(ErrorCode.VOLUME_REFUSED, `volume ${v.name}: ${(e as Error).message}`);
    }
    return true;
  }

  private refuse(code: ErrorCode, message: string): void {
    this.host.send([encodeError(code, message)]);
  }
}
