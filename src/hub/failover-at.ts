// Recovery to a point through failover (issue 14). Owns three decisions and one piece of state:
// which checkpoint a failover test or a failover uses for each VM (the one asked for with --at,
// or, when a volume is torn by a resync, the newest consistent one: never a torn replica); the
// failover-test views at a point (a COW layer over the journal's view: nothing is copied, and
// replication and journaling go on underneath); and the rollback of a promoted recovery volume
// to its point, recorded in the failover maps so that failback treats everything after the point
// as changed.
import * as path from 'node:path';
import { PointInTimeView } from '../../storage/overlay';
import type { Checkpoint } from '../../storage/journal';
import type { JournalView } from '../../storage/journal-view';
import type { DirtyLog } from '../../storage/dirty-log';
import type { BlockTarget } from '../../storage/volume';
import { JOURNAL_BLOCK } from '../../storage/journal-format';
import type { Logger } from '../log';
import { assert } from '../assert';
import { HubJournals, iso } from './journal';
import type { Replica } from './replica';

export class FailoverError extends Error {}

/** The point one VM's volumes are taken at: a checkpoint, or null for the present. */
export interface PointChoice {
  vm: string;
  volumes: Replica[];
  point: Checkpoint | null;
}

export interface PointRequest {
  /** A checkpoint id, a time, or latest (journal-at.ts). */
  at?: string;
  /** The VM `at` is of; needed when the volumes belong to several VMs. */
  vm?: string;
  force?: boolean;
}

/** Why `r`'s recovery volume matches no moment of its VM (a resync in progress), or null. */
export function tornReason(r: Replica): string | null {
  if (r.state === 'failed-over') return null;
  if (r.checksumResync) return `${r.name} is in a checksum resync`;
  const dirty = r.bitmap ? r.bitmap.dirtyBytes : (r.record?.sizeBytes ?? 0);
  return dirty > 0 ? `${r.name} is ${r.state} with ${dirty} bytes not yet resynced` : null;
}

/**
 * The point each VM's volumes are taken at. `at` applies to its VM (`vm`, or the only one); a VM
 * with a torn volume and no `at` falls back to its newest checkpoint, the last consistent point
 * before the resync; with none (no journal, or no point yet) it is refused unless `force`.
 */
export function choosePoints(
  reps: Replica[],
  req: PointRequest,
  journals: HubJournals | undefined,
  what: string,
  log: Logger,
): PointChoice[] {
  const byVm = new Map<string, Replica[]>();
  for (const r of reps) {
    const vm = r.record?.vm ?? '';
    byVm.set(vm, [...(byVm.get(vm) ?? []), r]);
  }
  if (req.at !== undefined) {
    if (!journals) throw new FailoverError(`${what} at ${req.at}: the hub keeps no journal (--no-journal)`);
    if (req.vm === undefined && byVm.size > 1)
      throw new FailoverError(
        `${what} at ${req.at}: the volumes belong to VMs ${[...byVm.keys()].join(', ')}; name one`,
      );
    if (req.vm !== undefined && !byVm.has(req.vm))
      throw new FailoverError(`${what}: no replicated volume of VM ${req.vm}`);
  }
  const out: PointChoice[] = [];
  for (const [vm, volumes] of byVm) {
    let point: Checkpoint | null = null;
    const torn = volumes.map(tornReason).filter((x): x is string => x !== null);
    if (req.at !== undefined && (req.vm === undefined || req.vm === vm)) point = journals!.resolve(vm, req.at);
    else if (torn.length) point = newestPoint(journals, vm);
    if (point === null && torn.length) {
      if (!req.force)
        throw new FailoverError(
          `${what} refused: ${torn.join('; ')}. The replica is torn: a resync writes regions out of order, so it matches no moment of VM ${vm}, and ${journals ? `VM ${vm} has no checkpoint to fall back to` : 'the hub keeps no journal (--no-journal) to fall back to'}. Wait for the resync to finish, or use force to take the torn replica anyway`,
        );
      log.error({ vm, torn }, `${what}: taking a TORN replica (force): it matches no moment of the VM`);
    } else if (point && req.at === undefined)
      log.warn(
        { vm, torn, checkpoint: point.id, time: iso(point.time) },
        `${what}: the replica is torn by a resync; the newest consistent point is used instead`,
      );
    out.push({ vm, volumes, point });
  }
  return out;
}

function newestPoint(journals: HubJournals | undefined, vm: string): Checkpoint | null {
  if (!journals || !journals.vms().includes(vm)) return null;
  const pts = journals.journal(vm).points();
  return pts.length ? pts[pts.length - 1] : null;
}

/** Each volume of `choices` that has a point: its journal view, opened before any is promoted. */
export async function openViews(
  journals: HubJournals | undefined,
  choices: PointChoice[],
  ensureTarget: (r: Replica) => Promise<unknown>,
): Promise<Map<string, JournalView>> {
  const views = new Map<string, JournalView>();
  try {
    for (const c of choices) {
      if (!c.point) continue;
      assert(journals !== undefined, 'a point comes from a journal');
      for (const r of c.volumes) {
        await ensureTarget(r); // the view's present is the replica's own stack, journal capture included
        views.set(r.name, journals.view(c.vm, r.name, c.point));
      }
    }
  } catch (e) {
    for (const v of views.values()) void v.close();
    throw e;
  }
  return views;
}

/** The failover test's views at a point: the test VM's writes go to a COW layer above each. */
export class PointViews {
  private readonly open = new Map<string, { cow: PointInTimeView; view: JournalView }>();

  constructor(private readonly layersDir: string) {}

  /** The test VM's disk for `view`'s volume (layers reopened if a restart left them). */
  add(name: string, view: JournalView, regionSize: number): BlockTarget {
    const cow = new PointInTimeView(view, path.join(this.layersDir, 'test', name), regionSize);
    this.open.set(name, { cow, view });
    return cow;
  }

  has(name: string): boolean {
    return this.open.has(name);
  }

  /** Throw the test layer away and let the journal go. */
  async discard(name: string): Promise<{ name: string; keptBytes: number; testWrittenBytes: number }> {
    const v = this.open.get(name)!;
    this.open.delete(name);
    const out = { name, keptBytes: v.view.journaledBlocks * JOURNAL_BLOCK, testWrittenBytes: v.cow.activeBytes };
    await v.cow.discard();
    await v.view.close();
    return out;
  }
}

/** VM -> checkpoint id of the choices taken at one, or undefined when none is. */
export function pointsOf(choices: PointChoice[]): Record<string, number> | undefined {
  const at = choices.filter((c) => c.point);
  return at.length ? Object.fromEntries(at.map((c) => [c.vm, c.point!.id])) : undefined;
}

/** Each volume's export and the checkpoint it is at (null: the present). */
export function volumesAt(choices: PointChoice[], uri: (name: string) => string) {
  return choices.flatMap((c) =>
    c.volumes.map((r) => ({
      name: r.name,
      uri: uri(r.name),
      checkpoint: c.point ? { id: c.point.id, time: new Date(c.point.time).toISOString(), kind: c.point.kind } : null,
    })),
  );
}

const ROLLBACK_CHUNK_BYTES = 1 << 20;

/**
 * Roll `r`'s recovery volume back to `view`'s point: every block changed since is written back
 * with its content at the point, through the replica's stack (the journal captures it too, so
 * older points stay right). Every such region is first marked recovery-changed, durably: failback
 * then writes it back to the protected volume, and a crash midway leaves the map covering all
 * that may differ. Running it again is idempotent: the journal still holds the point's content.
 */
export async function rollBack(r: Replica, view: JournalView, recoveryChanged: DirtyLog): Promise<number> {
  const target = r.target;
  assert(target !== undefined && r.failover !== null, 'a promoted replica with its target is rolled back');
  const size = view.sizeBytes;
  const runs = [...view.changedRuns()].map(([a, b]): [number, number] => [
    a * JOURNAL_BLOCK,
    Math.min(b * JOURNAL_BLOCK, size),
  ]);
  for (const [a, b] of runs) recoveryChanged.mark(a, b);
  recoveryChanged.sync(true); // the map before the volume changes
  const buf = Buffer.allocUnsafe(ROLLBACK_CHUNK_BYTES);
  let bytes = 0;
  for (const [a, b] of runs)
    for (let off = a; off < b; off += ROLLBACK_CHUNK_BYTES) {
      const piece = buf.subarray(0, Math.min(ROLLBACK_CHUNK_BYTES, b - off));
      await view.read(piece, off);
      await target.base.write(piece, off);
      bytes += piece.length;
    }
  await target.flush();
  return bytes;
}
