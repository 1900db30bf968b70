// Failover test, failover and failback: what replication is for. Owns the hub's NBD exports
// and the hub-wide mode records (persisted in the state store, restored on restart). Taking
// them at a journal checkpoint (--at, or a torn replica's last consistent point) is
// failover-at.ts's.
import * as path from 'node:path';
import * as fs from 'node:fs';
import { PointInTimeView } from '../../storage/overlay';
import { DirtyLog } from '../../storage/dirty-log';
import { TrackedTarget } from '../../storage/tracking';
import type { StateStore } from '../../storage/state';
import { ExportRegistry, TargetExport } from '../nbd/exports';
import type { Logger } from '../log';
import type { Replica, ReplicaOwner, TargetOpener } from './replica';
import { endFailover, enterFailover } from './replica-failover';
import { failBackVolume, Side, VolumeFailbackResult, Winner, winnersOf } from './failback-volume';
import type { JournalView } from '../../storage/journal-view';
import type { HubJournals } from './journal';
import {
  FailoverError,
  PointChoice,
  PointViews,
  choosePoints,
  openViews,
  pointsOf,
  rollBack,
  volumesAt,
} from './failover-at';
import { OperationGate } from './failover-gate';

export { FailoverError };
export type { Winner };

/** How long a stop or failback waits for NBD clients that are already disconnecting. */
const DISCONNECT_GRACE_MS = 1000;

interface TestRecord {
  volumes: string[];
  startedAt: string;
  vm: string | null;
  /** VM -> the checkpoint its volumes are viewed at (absent: the moment the test started). */
  points?: Record<string, number>;
}
interface FailoverRecord {
  volumes: string[];
  since: string;
  /** VM -> the checkpoint its volumes were promoted at (rolled back to). */
  points?: Record<string, number>;
  /** Volumes whose rollback to their point is done (a restart redoes the others). */
  rolledBack?: string[];
}

export interface FailoverHost {
  replicas: Map<string, Replica>;
  store: StateStore;
  openTarget: TargetOpener;
  layersDir: string;
  exports: ExportRegistry;
  nbdUri(name: string): string;
  log: Logger;
  /** The per-VM journals (absent with --no-journal): points to test and fail over at. */
  journals?: HubJournals;
  /** Told of each step as it is done (the hub's event bus): its name and the volumes, comma-separated. */
  step?(name: string, volumes: string): void;
}

export class FailoverController {
  private test: TestRecord | null = null;
  private failover: FailoverRecord | null = null;
  private readonly gate: OperationGate;
  private readonly pointViews: PointViews;
  /** Settles once restore() has reopened what was under way (recovery volumes open asynchronously). */
  ready: Promise<void> = Promise.resolve();

  constructor(private readonly h: FailoverHost) {
    this.pointViews = new PointViews(h.layersDir);
    this.gate = new OperationGate(() => this.ready.then(() => this.endedSessionsLetGo()), h.log);
  }

  /** Reopen a test or a failover that was under way when the hub stopped (see `ready`). */
  restore(): Promise<void> {
    this.ready = this.reopen();
    return this.ready;
  }

  private async reopen(): Promise<void> {
    const t = this.h.store.meta<TestRecord>('failoverTest');
    if (t) {
      const views = await this.recordedViews(t.volumes, t.points);
      for (const name of t.volumes) {
        const v = views.get(name);
        if (v) this.exportAt(this.replica(name), v);
        else if (!t.points?.[this.replica(name).record?.vm ?? '']) await this.activateView(this.replica(name));
      }
      this.test = t;
      this.h.log.info({ volumes: t.volumes, points: t.points }, 'failover test restored after restart');
    }
    const f = this.h.store.meta<FailoverRecord>('failover');
    if (f) {
      const rolled = f.rolledBack ?? [];
      const views = await this.recordedViews(
        f.volumes.filter((n) => !rolled.includes(n)),
        f.points,
      );
      for (const name of f.volumes) {
        await this.promote(this.replica(name));
        if (!f.points?.[this.replica(name).record?.vm ?? ''] || rolled.includes(name)) this.exportPromoted(name);
      }
      this.failover = f;
      this.h.log.info({ volumes: f.volumes, points: f.points }, 'failover restored after restart');
      if (views.size)
        void this.exclusive(() => this.rollBackAll(views)).catch((e: Error) =>
          this.h.log.error(
            { volumes: [...views.keys()], cause: e.message },
            'failover: rollback to the checkpoint failed',
          ),
        );
    }
  }

  /** The journal views a restart reopens for `names` at their VMs' recorded points. */
  private async recordedViews(
    names: string[],
    points: Record<string, number> | undefined,
  ): Promise<Map<string, JournalView>> {
    if (!points) return new Map();
    const choices: PointChoice[] = [];
    for (const name of names) {
      const r = this.replica(name),
        vm = r.record?.vm ?? '';
      if (points[vm] === undefined) continue;
      const point = this.h.journals?.pointOf(vm, points[vm]) ?? null;
      if (point) choices.push({ vm, volumes: [r], point });
      else this.h.log.error({ volume: name, vm, checkpoint: points[vm] }, 'the checkpoint of the volume is gone');
    }
    return openViews(this.h.journals, choices, (r) => r.ensureTarget(this.h.openTarget));
  }

  status() {
    return { failoverTest: this.test, failover: this.failover };
  }

  private replica(name: string): Replica {
    const r = this.h.replicas.get(name);
    if (!r) throw new FailoverError(`no volume ${name}`);
    return r;
  }

  /** The agent session that has `r` attached: the replica's one owner. */
  private ownerOf(r: Replica): ReplicaOwner | undefined {
    return r.owner ?? undefined;
  }

  /**
   * A session whose connection ended still applies what it received, and holds its volumes
   * until then: an operation starts after it let go, so it neither counts it as connected nor
   * promotes a volume still being written (the gate checks again that the hub is not stopping).
   */
  private async endedSessionsLetGo(): Promise<void> {
    const reps = [...this.h.replicas.values()];
    await Promise.all(reps.map((r) => r.owner?.ending));
    await Promise.all(reps.map((r) => r.idle)); // its last checkpoint saved, an RBD image let go
  }

  private exclusive<T>(fn: () => Promise<T>): Promise<T> {
    return this.gate.run(fn);
  }

  /** The hub stops: see OperationGate.close (default wait 10 s). */
  close(ms?: number): Promise<void> {
    return this.gate.close(ms);
  }

  // ---- failover test ----

  startTest(opts: {
    vm?: string;
    force?: boolean;
    flushWaitMs?: number;
    at?: string;
  }): Promise<{ volumes: { name: string; uri: string; checkpoint: object | null }[] }> {
    return this.exclusive(async () => {
      if (this.test)
        throw new FailoverError(`a failover test is already running (since ${this.test.startedAt}); stop it first`);
      if (this.failover) throw new FailoverError('the hub is failed over; a failover test makes no sense now');
      const reps = [...this.h.replicas.values()].filter((r) => r.record && (!opts.vm || r.record.vm === opts.vm));
      if (reps.length === 0)
        throw new FailoverError(opts.vm ? `no replicated volumes of VM ${opts.vm}` : 'no replicated volumes yet');
      const choices = choosePoints(reps, opts, this.h.journals, 'failover test', this.h.log);
      const present = choices.filter((c) => !c.point).flatMap((c) => c.volumes);
      const notReady = present.filter((r) => r.state !== 'protecting' && r.state !== 'stopped');
      if (notReady.length && !opts.force) {
        throw new FailoverError(
          `not converged: ${notReady.map((r) => `${r.name} is ${r.state}`).join(', ')}; the view would not be a consistent point (use force to take it anyway)`,
        );
      }
      // Volumes at a checkpoint: the journal's view, already fixed at its point.
      const views = await openViews(this.h.journals, choices, (r) => r.ensureTarget(this.h.openTarget));
      for (const [name, v] of views) this.exportAt(this.replica(name), v);
      // The others: freeze each VM's volumes at one point of its in-order write stream.
      const bySession = new Map<ReplicaOwner | undefined, Replica[]>();
      for (const r of present) {
        const s = this.ownerOf(r);
        bySession.set(s, [...(bySession.get(s) ?? []), r]);
      }
      for (const [s, rs] of bySession) {
        // The recovery volumes open first (an RBD image asynchronously), so that the views
        // themselves are taken at one point of the stream, with no wait between them.
        for (const r of rs) await r.ensureTarget(this.h.openTarget);
        const activate = () => {
          for (const r of rs) this.activateView(r);
        };
        if (s) await s.points.atFlush(activate, opts.flushWaitMs ?? 2000);
        else activate();
      }
      const points = pointsOf(choices);
      this.test = { volumes: reps.map((r) => r.name), startedAt: new Date().toISOString(), vm: opts.vm ?? null };
      if (points) this.test.points = points;
      this.h.store.putMeta('failoverTest', this.test);
      this.h.log.info({ volumes: this.test.volumes, points }, 'failover test started: point-in-time views exported');
      this.h.step?.('test-started', this.test.volumes.join(','));
      return { volumes: volumesAt(choices, (n) => this.h.nbdUri(n)) };
    });
  }

  private activateView(r: Replica): void | Promise<void> {
    if (!r.target) return r.ensureTarget(this.h.openTarget).then(() => this.activateView(r));
    const target = r.target;
    if (!target.view)
      target.view = new PointInTimeView(target.base, path.join(this.h.layersDir, 'test', r.name), r.record!.regionSize);
    // The test VM's disk: the point-in-time view (COW layers) over the recovery volume.
    this.h.exports.add(new TargetExport(r.name, target.view));
  }

  /** The test VM's disk at a checkpoint: a COW layer over the journal's view (nothing copied). */
  private exportAt(r: Replica, view: JournalView): void {
    this.h.exports.add(new TargetExport(r.name, this.pointViews.add(r.name, view, r.record!.regionSize)));
  }

  /** Refused while NBD clients use the views, unless `force`: they are disconnected first. */
  stopTest(
    opts: { force?: boolean } = {},
  ): Promise<{ volumes: { name: string; keptBytes: number; testWrittenBytes: number }[] }> {
    return this.exclusive(async () => {
      if (!this.test) throw new FailoverError('no failover test is running');
      await this.refuseAttached(this.test.volumes, opts.force, 'stopping the failover test');
      // its clients are cut off before the layers go (all at once: none can attach in between)
      await Promise.all(this.test.volumes.map((n) => this.h.exports.remove(n)));
      const out: { name: string; keptBytes: number; testWrittenBytes: number }[] = [];
      for (const name of this.test.volumes) {
        if (this.pointViews.has(name)) {
          out.push(await this.pointViews.discard(name)); // replication never wrote into it
          continue;
        }
        const r = this.replica(name);
        const drop = async () => {
          const view = r.target?.view;
          if (!view) return;
          r.target!.view = null; // between two applied writes: no preserve is in progress
          out.push({ name, keptBytes: view.keptBytes, testWrittenBytes: view.activeBytes });
          await view.discard();
        };
        const s = this.ownerOf(r);
        if (s) await s.barrier(drop);
        else await drop();
      }
      this.h.store.putMeta('failoverTest', undefined);
      this.h.log.info({ volumes: out }, 'failover test stopped: layers discarded');
      this.h.step?.('test-stopped', this.test?.volumes.join(',') ?? '');
      this.test = null;
      return { volumes: out };
    });
  }

  // ---- failover and failback ----

  /**
   * Promote the recovery volumes. At a checkpoint (`at`, or the newest consistent one of a VM
   * with a torn volume) its volumes are rolled back to it first and exported only then.
   */
  failoverNow(opts: { force?: boolean; at?: string; vm?: string }): Promise<{ volumes: object[] }> {
    return this.exclusive(async () => {
      if (this.test) throw new FailoverError('a failover test is running; stop it first');
      if (this.failover) throw new FailoverError(`already failed over (since ${this.failover.since})`);
      const reps = [...this.h.replicas.values()].filter((r) => r.record);
      if (reps.length === 0) throw new FailoverError('no replicated volumes');
      const connected = reps.filter((r) => this.ownerOf(r));
      if (connected.length && !opts.force) {
        throw new FailoverError(
          `the protected site is still connected for ${connected.map((r) => r.name).join(', ')}: failing over now splits the brain (use force if it is really gone)`,
        );
      }
      const choices = choosePoints(reps, opts, this.h.journals, 'failover', this.h.log);
      // the views open before promotion
      const views = await openViews(this.h.journals, choices, (r) => r.ensureTarget(this.h.openTarget));
      const generations = new Map<string, number>();
      for (const r of reps) {
        await this.promote(r);
        if (!views.has(r.name)) this.exportPromoted(r.name);
        generations.set(r.name, await r.newGeneration());
      }
      this.failover = { volumes: reps.map((r) => r.name), since: new Date().toISOString() };
      const points = pointsOf(choices);
      if (points) Object.assign(this.failover, { points, rolledBack: [] });
      this.h.store.putMeta('failover', this.failover); // before any rollback: a restart redoes it
      const rolled = await this.rollBackAll(views);
      const out = volumesAt(choices, (n) => this.h.nbdUri(n)).map((v) => ({
        ...v,
        generation: generations.get(v.name),
        rolledBackBytes: rolled.get(v.name) ?? 0,
      }));
      this.h.log.warn({ volumes: out }, 'FAILOVER: recovery volumes promoted and exported read-write');
      this.h.step?.('promoted', out.map((v) => v.name).join(','));
      return { volumes: out };
    });
  }

  private async promote(r: Replica): Promise<void> {
    await r.ensureTarget(this.h.openTarget);
    const dir = path.join(this.h.layersDir, 'failover');
    fs.mkdirSync(dir, { recursive: true });
    const size = r.record!.sizeBytes,
      rs = r.record!.regionSize;
    const maps = {
      recoveryChanged: DirtyLog.open(path.join(dir, `${r.name}.recovery.map`), size, rs, false),
      protectedChanged: DirtyLog.open(path.join(dir, `${r.name}.protected.map`), size, rs, false),
      failingBack: null,
    };
    enterFailover(r, maps);
  }

  /** The recovery VM's disk: recovery-changed tracking over the replica's stack below its guard. */
  private exportPromoted(name: string): void {
    const r = this.replica(name);
    this.h.exports.add(new TargetExport(r.name, new TrackedTarget(r.target!.base, r.failover!.recoveryChanged)));
  }

  /**
   * Roll each promoted volume of `views` back to its point (failover-at.ts), newer points of
   * its VM dropped first; each is exported once done, and recorded done. The bytes per volume.
   */
  private async rollBackAll(views: Map<string, JournalView>): Promise<Map<string, number>> {
    const bytes = new Map<string, number>();
    try {
      const dropped = new Set<string>();
      for (const [name, view] of views) {
        const r = this.replica(name),
          vm = r.record!.vm ?? '';
        if (!dropped.has(vm)) this.h.journals!.rolledBackTo(vm, view.point);
        dropped.add(vm);
        bytes.set(name, await rollBack(r, view, r.failover!.recoveryChanged));
        this.failover!.rolledBack = [...(this.failover!.rolledBack ?? []), name];
        this.h.store.putMeta('failover', this.failover);
        this.exportPromoted(name);
        this.h.log.warn(
          { volume: name, vm, checkpoint: view.point.id, rolledBackBytes: bytes.get(name) },
          'failover: recovery volume rolled back to the checkpoint; failback treats everything after it as changed',
        );
      }
    } finally {
      for (const v of views.values()) await v.close();
    }
    return bytes;
  }

  /**
   * The original site is back: make the protected volumes equal to the recovery volumes by
   * writing back only regions either side changed (plus what the hub never received), then
   * resume protection. A volume whose winner is 'protected' throws the recovery side's changes
   * away instead. Volume by volume (failback-volume.ts), each leaving the failover record only
   * once it is done: a crash in between leaves the rest failed over, and failback runs again.
   */
  failback(opts: { winner?: Winner; force?: boolean }): Promise<{ volumes: VolumeFailbackResult[] }> {
    return this.exclusive(async () => {
      if (!this.failover) throw new FailoverError('not failed over: nothing to fail back');
      const names = this.failover.volumes;
      const reps = names.map((n) => this.replica(n));
      const winners = winnersOf(names, opts.winner);
      const missing = reps.filter((r) => !this.ownerOf(r));
      if (missing.length)
        throw new FailoverError(
          `the protected site's agent is not connected for ${missing.map((r) => r.name).join(', ')}`,
        );
      const diverged = reps.filter(
        (r) =>
          !winners.has(r.name) &&
          r.failover!.protectedChanged.bitmap.dirtyRegions > 0 &&
          r.failover!.recoveryChanged.bitmap.dirtyRegions > 0,
      );
      if (diverged.length) {
        throw new FailoverError(
          `both sides changed since the failover (${diverged.map((r) => `${r.name}: ${r.failover!.recoveryChanged.bitmap.dirtyBytes} bytes on the recovery side, ${r.failover!.protectedChanged.bitmap.dirtyBytes} on the protected side`).join('; ')}); choose which wins (winner recovery or protected, for all or per volume: V1=recovery,V2=protected)`,
        );
      }
      await this.refuseAttached(names, opts.force, 'failback');
      await Promise.all(names.map((n) => this.h.exports.remove(n))); // the recovery VM must be gone now
      const out: VolumeFailbackResult[] = [];
      for (const r of reps) {
        const done = await failBackVolume(r, this.ownerOf(r)!, winners.get(r.name) ?? 'recovery');
        await this.finishFailback(r, done.winner);
        out.push(done);
      }
      this.h.log.warn({ volumes: out }, 'FAILBACK done: protection resumed in the normal direction');
      this.h.step?.('failback-done', out.map((v) => v.name).join(','));
      return { volumes: out };
    });
  }

  /** Step 3 of a volume's failback: its maps go (files first), then it leaves the failover record. */
  private async finishFailback(r: Replica, winner: Side): Promise<void> {
    endFailover(r);
    await r.newGeneration();
    r.setState(winner === 'protected' || r.bitmap!.dirtyRegions > 0 ? 'syncing' : 'protecting');
    for (const side of ['recovery', 'protected'])
      fs.rmSync(path.join(this.h.layersDir, 'failover', `${r.name}.${side}.map`), { force: true });
    const left = this.failover!.volumes.filter((n) => n !== r.name);
    this.failover = left.length ? { ...this.failover!, volumes: left } : null;
    this.h.store.putMeta('failover', this.failover ?? undefined);
    this.h.log.info({ volume: r.name, winner, left }, 'failback of the volume done');
    this.h.step?.(`failback-volume-done-${winner}-wins`, r.name);
    this.ownerOf(r)?.pump();
  }

  /** Exports about to go must have no NBD client left, unless `force` (they are cut off then). */
  private async refuseAttached(names: string[], force: boolean | undefined, what: string): Promise<void> {
    if (!force) await this.h.exports.whenIdle(names, DISCONNECT_GRACE_MS);
    const held = names.map((n) => ({ n, c: this.h.exports.attachedClients(n) })).filter((x) => x.c > 0);
    if (held.length === 0) return;
    const list = held.map(({ n, c }) => `${n} (${c} client${c === 1 ? '' : 's'})`).join(', ');
    if (!force)
      throw new FailoverError(
        `${what} refused: NBD clients are still attached to ${list}; shut them down, or use force to disconnect them`,
      );
    this.h.log.warn({ volumes: held.map((x) => x.n), action: what }, `${what}: disconnecting NBD clients of ${list}`);
  }
}
