// Failover test, failover and failback: what replication is for. Owns the hub's NBD exports
// and the hub-wide mode records (persisted in the state store, restored on restart).
import * as path from 'node:path';
import * as fs from 'node:fs';
import { PointInTimeView } from '../../storage/overlay';
import { DirtyLog } from '../../storage/dirty-log';
import { TrackedTarget } from '../../storage/tracking';
import type { StateStore } from '../../storage/state';
import { ExportRegistry, TargetExport } from '../nbd/exports';
import type { Logger } from '../log';
import type { Replica, ReplicaOwner, TargetOpener } from './replica';
import { failBackVolume, Side, VolumeFailbackResult } from './failback-volume';

/** Whose changes win at failback: one side for every volume, or one per volume. */
export type Winner = Side | Record<string, Side>;

export class FailoverError extends Error {}

interface TestRecord {
  volumes: string[];
  startedAt: string;
  vm: string | null;
}
interface FailoverRecord {
  volumes: string[];
  since: string;
}

export interface FailoverHost {
  replicas: Map<string, Replica>;
  store: StateStore;
  openTarget: TargetOpener;
  layersDir: string;
  exports: ExportRegistry;
  nbdUri(name: string): string;
  log: Logger;
}

export class FailoverController {
  private test: TestRecord | null = null;
  private failover: FailoverRecord | null = null;
  private busy = false;
  /** Settles once restore() has reopened what was under way (recovery volumes open asynchronously). */
  ready: Promise<void> = Promise.resolve();

  constructor(private readonly h: FailoverHost) {}

  /** Reopen a test or a failover that was under way when the hub stopped (see `ready`). */
  restore(): Promise<void> {
    this.ready = this.reopen();
    return this.ready;
  }

  private async reopen(): Promise<void> {
    const t = this.h.store.meta<TestRecord>('failoverTest');
    if (t) {
      for (const name of t.volumes) await this.activateView(this.replica(name));
      this.test = t;
      this.h.log.info({ volumes: t.volumes }, 'failover test restored after restart');
    }
    const f = this.h.store.meta<FailoverRecord>('failover');
    if (f) {
      for (const name of f.volumes) await this.promote(this.replica(name));
      this.failover = f;
      this.h.log.info({ volumes: f.volumes }, 'failover restored after restart');
    }
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

  private async exclusive<T>(fn: () => Promise<T>): Promise<T> {
    if (this.busy) throw new FailoverError('another failover operation is in progress');
    this.busy = true;
    try {
      await this.ready;
      return await fn();
    } finally {
      this.busy = false;
    }
  }

  // ---- failover test ----

  startTest(opts: {
    vm?: string;
    force?: boolean;
    flushWaitMs?: number;
  }): Promise<{ volumes: { name: string; uri: string }[] }> {
    return this.exclusive(async () => {
      if (this.test)
        throw new FailoverError(`a failover test is already running (since ${this.test.startedAt}); stop it first`);
      if (this.failover) throw new FailoverError('the hub is failed over; a failover test makes no sense now');
      const reps = [...this.h.replicas.values()].filter((r) => r.record && (!opts.vm || r.record.vm === opts.vm));
      if (reps.length === 0)
        throw new FailoverError(opts.vm ? `no replicated volumes of VM ${opts.vm}` : 'no replicated volumes yet');
      const notReady = reps.filter((r) => r.state !== 'protecting' && r.state !== 'stopped');
      if (notReady.length && !opts.force) {
        throw new FailoverError(
          `not converged: ${notReady.map((r) => `${r.name} is ${r.state}`).join(', ')}; the view would not be a consistent point (use force to take it anyway)`,
        );
      }
      // Freeze each VM's volumes at one point of its in-order write stream.
      const bySession = new Map<ReplicaOwner | undefined, Replica[]>();
      for (const r of reps) {
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
        if (s) await s.barrierAtFlush(activate, opts.flushWaitMs ?? 2000);
        else activate();
      }
      this.test = { volumes: reps.map((r) => r.name), startedAt: new Date().toISOString(), vm: opts.vm ?? null };
      this.h.store.putMeta('failoverTest', this.test);
      this.h.log.info({ volumes: this.test.volumes }, 'failover test started: point-in-time views exported');
      return { volumes: reps.map((r) => ({ name: r.name, uri: this.h.nbdUri(r.name) })) };
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

  /** Refused while NBD clients use the views, unless `force`: they are disconnected first. */
  stopTest(
    opts: { force?: boolean } = {},
  ): Promise<{ volumes: { name: string; keptBytes: number; testWrittenBytes: number }[] }> {
    return this.exclusive(async () => {
      if (!this.test) throw new FailoverError('no failover test is running');
      this.refuseAttached(this.test.volumes, opts.force, 'stopping the failover test');
      // its clients are cut off before the layers go (all at once: none can attach in between)
      await Promise.all(this.test.volumes.map((n) => this.h.exports.remove(n)));
      const out: { name: string; keptBytes: number; testWrittenBytes: number }[] = [];
      for (const name of this.test.volumes) {
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
      this.test = null;
      return { volumes: out };
    });
  }

  // ---- failover and failback ----

  failoverNow(opts: { force?: boolean }): Promise<{ volumes: { name: string; uri: string; generation: number }[] }> {
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
      const out = [];
      for (const r of reps) {
        await this.promote(r);
        out.push({ name: r.name, uri: this.h.nbdUri(r.name), generation: await r.newGeneration() });
      }
      this.failover = { volumes: reps.map((r) => r.name), since: new Date().toISOString() };
      this.h.store.putMeta('failover', this.failover);
      this.h.log.warn({ volumes: out }, 'FAILOVER: recovery volumes promoted and exported read-write');
      return { volumes: out };
    });
  }

  private async promote(r: Replica): Promise<void> {
    const target = await r.ensureTarget(this.h.openTarget);
    const dir = path.join(this.h.layersDir, 'failover');
    fs.mkdirSync(dir, { recursive: true });
    const size = r.record!.sizeBytes,
      rs = r.record!.regionSize;
    const maps = {
      recoveryChanged: DirtyLog.open(path.join(dir, `${r.name}.recovery.map`), size, rs, false),
      protectedChanged: DirtyLog.open(path.join(dir, `${r.name}.protected.map`), size, rs, false),
      failingBack: null,
    };
    r.enterFailover(maps);
    // The recovery VM's disk: recovery-changed tracking over the replica's own stack below its guard
    // (which keeps the replica's known-zero map right).
    this.h.exports.add(new TargetExport(r.name, new TrackedTarget(target.base, maps.recoveryChanged)));
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
      this.refuseAttached(names, opts.force, 'failback');
      await Promise.all(names.map((n) => this.h.exports.remove(n))); // the recovery VM must be gone now
      const out: VolumeFailbackResult[] = [];
      for (const r of reps) {
        const done = await failBackVolume(r, this.ownerOf(r)!, winners.get(r.name) ?? 'recovery');
        await this.finishFailback(r, done.winner);
        out.push(done);
      }
      this.h.log.warn({ volumes: out }, 'FAILBACK done: protection resumed in the normal direction');
      return { volumes: out };
    });
  }

  /** Step 3 of a volume's failback: its maps go (files first), then it leaves the failover record. */
  private async finishFailback(r: Replica, winner: Side): Promise<void> {
    r.endFailover();
    await r.newGeneration();
    r.setState(winner === 'protected' || r.bitmap!.dirtyRegions > 0 ? 'syncing' : 'protecting');
    for (const side of ['recovery', 'protected'])
      fs.rmSync(path.join(this.h.layersDir, 'failover', `${r.name}.${side}.map`), { force: true });
    const left = this.failover!.volumes.filter((n) => n !== r.name);
    this.failover = left.length ? { ...this.failover!, volumes: left } : null;
    this.h.store.putMeta('failover', this.failover ?? undefined);
    this.h.log.info({ volume: r.name, winner, left }, 'failback of the volume done');
    this.ownerOf(r)?.pump();
  }

  /** Exports about to go must have no NBD client left, unless `force` (they are cut off then). */
  private refuseAttached(names: string[], force: boolean | undefined, what: string): void {
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

/** The winner of each volume: one side for all, or a side per named volume (checked). */
function winnersOf(volumes: string[], w: Winner | undefined): Map<string, Side> {
  const out = new Map<string, Side>();
  const isSide = (v: unknown): v is Side => v === 'recovery' || v === 'protected';
  if (w === undefined) return out;
  if (typeof w === 'string') {
    if (!isSide(w)) throw new FailoverError(`winner must be "recovery" or "protected", not ${JSON.stringify(w)}`);
    for (const n of volumes) out.set(n, w);
    return out;
  }
  for (const [n, side] of Object.entries(w)) {
    if (!volumes.includes(n))
      throw new FailoverError(
        `winner names volume ${n}, which is not failed over (failed over: ${volumes.join(', ')})`,
      );
    if (!isSide(side))
      throw new FailoverError(`winner of ${n} must be "recovery" or "protected", not ${JSON.stringify(side)}`);
    out.set(n, side);
  }
  return out;
}
