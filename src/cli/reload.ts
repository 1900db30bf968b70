// SIGHUP on the hub: read the --config file again and apply what can change live. Volumes added
// to `vol` start (locked, then added: hub/volume-set.ts), removed ones stop cleanly, each logged;
// `log-level` applies at once; any other changed key is logged as needing a restart. A file with
// a problem changes nothing (each problem logged as at start). Flags given on the command line
// still win over the file, as at start. Owns the settings in force and the volume locks taken
// or dropped by a reload; reloads run one at a time.
import type { Hub } from '../hub/hub';
import { addVolume, removeVolume } from '../hub/volume-set';
import { isRbdPath } from '../hub/rbd-target';
import type { Logger } from '../log';
import { FileLock, lockExclusive, volumeLockPath } from '../../storage/lock';
import type { HubSettings, VolSpec } from './hub-settings';

export interface VolumeDiff {
  added: VolSpec[];
  removed: VolSpec[];
  /** Same name, another path or VM binding: applied only by a restart. */
  changed: { from: VolSpec; to: VolSpec }[];
}

const sameVol = (a: VolSpec, b: VolSpec) => a.path === b.path && (a.vm ?? '') === (b.vm ?? '');

/** What changes in the `vol` list, by volume name. */
export function diffVolumes(before: readonly VolSpec[], after: readonly VolSpec[]): VolumeDiff {
  const old = new Map(before.map((v) => [v.name, v]));
  const now = new Map(after.map((v) => [v.name, v]));
  const diff: VolumeDiff = { added: [], removed: [], changed: [] };
  for (const v of after) {
    const was = old.get(v.name);
    if (!was) diff.added.push(v);
    else if (!sameVol(was, v)) diff.changed.push({ from: was, to: v });
  }
  for (const v of before) if (!now.has(v.name)) diff.removed.push(v);
  return diff;
}

/** Settings keys (other than volumes and the log level) whose new value differs. */
export function changedKeys(before: HubSettings, after: HubSettings): (keyof HubSettings)[] {
  const keys = Object.keys({ ...before, ...after }) as (keyof HubSettings)[];
  return keys.filter((k) => k !== 'volumes' && JSON.stringify(before[k]) !== JSON.stringify(after[k]));
}

export interface ReloadDeps {
  hub: Hub;
  log: Logger;
  /** The settings of the file as it is now, or the problems that keep it from applying. */
  resolve(): { settings?: HubSettings; problems: string[]; logLevel?: string };
  /** Locks of the recovery volumes in force, by volume name (rbd: volumes have none). */
  locks: Map<string, FileLock>;
}

export class HubReloader {
  private running: Promise<void> = Promise.resolve();

  constructor(
    private current: HubSettings,
    private readonly d: ReloadDeps,
  ) {}

  /** One reload after those already asked for. */
  reload(): Promise<void> {
    this.running = this.running.then(() => this.once());
    return this.running;
  }

  private async once(): Promise<void> {
    const { log } = this.d;
    let r: ReturnType<ReloadDeps['resolve']>;
    try {
      r = this.d.resolve();
    } catch (e) {
      r = { problems: [(e as Error).message] };
    }
    if (!r.settings) {
      for (const line of r.problems) log.error({ problem: line }, `config reload: ${line}`);
      log.error({ problems: r.problems.length }, 'config reload refused: nothing changed');
      return;
    }
    if (r.logLevel && r.logLevel !== log.level) {
      log.info({ from: log.level, to: r.logLevel }, 'config reload: log-level applied');
      log.level = r.logLevel;
    }
    for (const key of changedKeys(this.current, r.settings))
      log.warn({ key, from: this.current[key], to: r.settings[key] }, 'config reload: changed; needs a restart');
    const diff = diffVolumes(this.current.volumes, r.settings.volumes);
    for (const c of diff.changed)
      log.warn({ volume: c.from.name, from: c.from, to: c.to }, 'config reload: volume changed; needs a restart');
    const kept = this.current.volumes.filter((v) => !diff.removed.includes(v));
    for (const v of diff.removed) if (!(await this.remove(v))) kept.push(v);
    for (const v of diff.added) if (await this.add(v)) kept.push(v);
    this.current = { ...this.current, volumes: kept };
    log.info(
      { added: diff.added.length, removed: diff.removed.length, volumes: kept.map((v) => v.name) },
      'config reloaded',
    );
  }

  private async remove(v: VolSpec): Promise<boolean> {
    const ctx = { volume: v.name, path: v.path };
    try {
      this.d.log.info(ctx, 'config reload: removing volume');
      await removeVolume(this.d.hub, v.name);
      this.d.locks.get(v.name)?.release();
      this.d.locks.delete(v.name);
      return true;
    } catch (e) {
      this.d.log.error({ ...ctx, cause: (e as Error).message }, 'config reload: volume not removed');
      return false;
    }
  }

  private async add(v: VolSpec): Promise<boolean> {
    const ctx = { volume: v.name, path: v.path, vm: v.vm };
    let lock: FileLock | undefined;
    try {
      if (!isRbdPath(v.path)) lock = lockExclusive(volumeLockPath(v.path), `recovery volume ${v.path}`);
      await addVolume(this.d.hub, v);
      if (lock) this.d.locks.set(v.name, lock);
      return true;
    } catch (e) {
      lock?.release();
      this.d.log.error({ ...ctx, cause: (e as Error).message }, 'config reload: volume not added');
      return false;
    }
  }
}
