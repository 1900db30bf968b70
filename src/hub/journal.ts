// The hub's journals, one per VM (storage/journal.ts): which VM a recovery volume records into,
// the consistent points (at each agent FLUSH marker, every --checkpoint-interval while writes
// flow, and tags on demand), retention, and the point-in-time views that restore reads. A point
// is taken only at a point of the VM's applied stream where every one of its volumes is
// protecting: during a resync the volume is torn, and the last point before it stays the newest.
// And only where the agent vouches that no write it owes by report is missing (SPEC.md 7.4): an
// interval point or a tag is taken at the agent's POINT answer, or at its next FLUSH marker when
// it cannot mark points; at the hub's own barrier only when it can owe nothing (no DIRTY_REPORT).
import { isRbdPath } from './rbd-target';
import * as fs from 'node:fs';
import * as path from 'node:path';
import type { BlockTarget } from '../../storage/volume';
import { FileVolume } from '../../storage/volume';
import { Checkpoint, Journal } from '../../storage/journal';
import { JournalBinding, JournalTarget } from '../../storage/journal-target';
import { JournalView } from '../../storage/journal-view';
import type { CheckpointKind } from '../../storage/journal-format';
import type { Logger } from '../log';
import type { Replica } from './replica';
import { currentBootId } from '../../storage/journal-mark';
import { parseAt } from './journal-at';

export interface JournalConfig {
  dir: string;
  /** Points older than this are dropped (the newest never is by age). */
  retentionMs: number;
  /** Journal bytes per VM; over it the oldest segments (and their points) go. */
  maxBytes: number;
  /** A point at least this often while writes flow. */
  intervalMs: number;
  segmentBytes?: number;
  /** This boot of the machine (default: the kernel's boot id); a power cut is a change of it. */
  bootId?: string;
}

export class JournalRefused extends Error {}

export interface JournalStatus {
  vm: string;
  bytes: number;
  points: number;
  oldestPointAgeMs: number | null;
  drops: number;
  /** The journal was open across a power cut: every point it had was dropped at start. */
  powerLoss: { at: string; droppedPoints: number; message: string } | null;
}

const TICK_MS_MAX = 1000;

export class HubJournals {
  private readonly journals = new Map<string, Journal>(); // by VM
  private readonly pendingTags = new Map<string, string>(); // VM -> label for its next point
  private readonly timer: NodeJS.Timeout;
  private readonly bootId: string;

  constructor(
    readonly cfg: JournalConfig,
    private readonly replicas: Map<string, Replica>,
    private readonly log: Logger,
  ) {
    this.bootId = cfg.bootId ?? currentBootId();
    fs.mkdirSync(cfg.dir, { recursive: true });
    for (const d of fs.readdirSync(cfg.dir, { withFileTypes: true }))
      if (d.isDirectory()) this.journal(decodeURIComponent(d.name));
    this.timer = setInterval(() => this.tick(), Math.min(TICK_MS_MAX, Math.max(50, cfg.intervalMs / 5)));
    this.timer.unref();
  }

  /** The capture filter for a replica's stack; it binds to its VM's journal once the VM is known. */
  filterFor(r: Replica): (t: BlockTarget) => BlockTarget {
    return (t) => new JournalTarget(t, r.spec.path, () => this.bind(r));
  }

  /** The journal of `vm`, opened (and recovered) on first use. */
  journal(vm: string): Journal {
    let j = this.journals.get(vm);
    if (!j) {
      const dir = path.join(this.cfg.dir, encodeURIComponent(vm));
      j = Journal.open(dir, {
        segmentBytes: this.cfg.segmentBytes ?? Math.min(64 << 20, Math.max(1 << 20, Math.floor(this.cfg.maxBytes / 8))),
        warn: (f, m) => this.log.warn({ vm, ...f }, m),
        bootId: this.bootId,
      });
      if (j.powerLoss)
        this.log.error(
          { vm, dir, droppedPoints: j.powerLoss.dropped, openUnderBoot: j.powerLoss.bootId, bootId: this.bootId },
          'journal: points cannot be proven after a power loss; every point dropped',
        );
      this.journals.set(vm, j);
      this.log.info({ vm, dir, points: j.points().length, bytes: j.bytes }, 'journal open');
    }
    return j;
  }

  /** Every VM with a journal on disk or open. */
  vms(): string[] {
    return [...this.journals.keys()];
  }

  /** Told of every new checkpoint and every one tagged last-clean (the hub's event bus). */
  onCheckpoint: ((vm: string, cp: Checkpoint) => void) | null = null;

  /** The agent's FLUSH marker was applied: a point, if anything was written since the last. */
  onFlushMarker(vm: string): Promise<void> | void {
    const j = this.journals.get(vm);
    if (j?.capturesPending) return j.captured().then(() => void this.point(vm, 'flush'));
    this.point(vm, 'flush');
  }

  /** The agent's POINT (asked for by tick or tag) was applied: an interval point, or the tag. */
  onPointMarker(vm: string): Promise<void> | void {
    const j = this.journals.get(vm);
    if (j?.capturesPending) return j.captured().then(() => void this.point(vm, 'interval'));
    this.point(vm, 'interval');
  }

  /** Tag the next consistent point of `vm` (now, if it is at one and the agent can owe nothing). */
  tag(vm: string, label: string): { pending: boolean; checkpoint?: Checkpoint } {
    if (!label) throw new JournalRefused('a tag needs a label');
    const mine = this.volumesOf(vm);
    if (mine.length === 0 && !this.journals.has(vm)) throw new JournalRefused(`no volume of VM ${vm} is known`);
    this.pendingTags.set(vm, label);
    const at = mine.find((r) => r.owner)?.owner?.points.ask();
    if (at === 'marker' || at === 'flush') return { pending: true }; // taken at the agent's marker
    const cp = this.point(vm, 'tag');
    return cp ? { pending: false, checkpoint: cp } : { pending: true };
  }

  /**
   * tag(), waiting up to `waitMs` for the point when it waits for the agent's marker (a POINT
   * asked for comes back within a round trip; a FLUSH only when the guest flushes).
   */
  async tagSoon(vm: string, label: string, waitMs: number): Promise<{ pending: boolean; checkpoint?: Checkpoint }> {
    const r = this.tag(vm, label);
    for (const end = Date.now() + waitMs; r.pending && Date.now() < end;) {
      await new Promise((res) => setTimeout(res, 10));
      if (this.pendingTags.get(vm) === label) continue;
      const pts = this.journals.get(vm)?.points() ?? [];
      const cp = [...pts].reverse().find((p) => p.kind === 'tag' && p.label === label);
      return cp ? { pending: false, checkpoint: cp } : r;
    }
    return r;
  }

  /** Run at a point of `vm`'s stream; null when it is not consistent now (or nothing changed). */
  point(vm: string, kind: CheckpointKind): Checkpoint | null {
    const label = this.pendingTags.get(vm);
    const vols = this.volumesOf(vm);
    if (vols.length === 0 || !vols.every((r) => r.state === 'protecting' && !r.failover)) return null;
    const j = this.journal(vm);
    for (const r of vols) j.volumeIndex(r.name); // a volume that has not written yet is part of the point too
    if (label === undefined && j.capturedSincePoint === 0 && j.points().length > 0) return null;
    if (j.capturesPending) return null; // a tag waits for the next point (flush, interval)
    const cp = j.appendCheckpoint(label !== undefined ? 'tag' : kind, label);
    this.pendingTags.delete(vm);
    this.log.debug({ vm, checkpoint: cp.id, kind: cp.kind, label: cp.label }, 'checkpoint');
    this.onCheckpoint?.(vm, cp);
    return cp;
  }

  /**
   * An encryption alarm on one of `vm`'s volumes: its last point before the suspicious run
   * began becomes `last-clean`, the point to recover to.
   */
  lastClean(vm: string, volume: string, before: number): Checkpoint | null {
    const j = this.journals.get(vm);
    const pts = j?.points() ?? [];
    let cp: Checkpoint | undefined;
    for (const p of pts) if (p.time < before) cp = p;
    const label = `before the encryption alarm on ${volume} at ${iso(before)}`;
    const marked = cp && j!.remark(cp.id, 'last-clean', label);
    if (marked) this.log.warn({ vm, volume, checkpoint: marked.id, time: iso(marked.time) }, 'last clean point tagged');
    else
      this.log.error({ vm, volume }, 'encryption alarm: no checkpoint before the suspicious writes to tag last-clean');
    return marked || null;
  }

  /** Resolve `at` (an id, an ISO time, "10 min ago", or latest) to a point of `vm`. */
  resolve(vm: string, at: string): Checkpoint {
    const j = this.journals.get(vm);
    const pts = j?.points() ?? [];
    if (pts.length === 0) throw new JournalRefused(`VM ${vm} has no checkpoints`);
    let want;
    try {
      want = parseAt(at, Date.now());
    } catch (e) {
      throw new JournalRefused((e as Error).message);
    }
    let cp: Checkpoint | undefined;
    if (want.latest) cp = pts[pts.length - 1];
    else if (want.id !== undefined) cp = pts.find((p) => p.id === want.id);
    else for (const p of pts) if (p.time <= want.time!) cp = p;
    if (!cp) throw new JournalRefused(`VM ${vm}: no checkpoint at ${at} (oldest ${pts[0].id} at ${iso(pts[0].time)})`);
    return cp;
  }

  /** Point `id` of `vm`, or null when it is not (or no longer) in the journal. */
  pointOf(vm: string, id: number): Checkpoint | null {
    return (
      this.journals
        .get(vm)
        ?.points()
        .find((p) => p.id === id) ?? null
    );
  }

  /** A read-only view of `volume` of `vm` at point `cp`; close it when done. */
  view(vm: string, volume: string, cp: Checkpoint): JournalView {
    const r = this.replicas.get(volume);
    const j = this.journals.get(vm);
    if (!r || !j) throw new JournalRefused(`volume ${volume} of VM ${vm} is unknown`);
    if (r.state === 'failed-over' || r.failover) throw new JournalRefused(`volume ${volume} is failed over`);
    const vol = j.volumeIndex(volume);
    const size = r.record?.sizeBytes;
    if (size === undefined) throw new JournalRefused(`volume ${volume} has never been protected`);
    if (!r.target && isRbdPath(r.spec.path))
      throw new JournalRefused(`volume ${volume}: its RBD image is open only while an agent is attached here`);
    const base: BlockTarget = r.target ?? FileVolume.open(r.spec.path, { readOnly: true });
    return new JournalView(base, j, vol, cp);
  }

  /** `vm`'s volumes were rolled back to `cp` (failover --at): its newer points are gone, durably. */
  rolledBackTo(vm: string, cp: Checkpoint): void {
    const dropped = this.journal(vm).dropAfter(cp.id);
    this.log.warn(
      { vm, checkpoint: cp.id, time: iso(cp.time), dropped },
      'journal: the points newer than the promoted one are dropped (the recovery volumes were rolled back to it)',
    );
  }

  list(vm?: string): { vm: string; checkpoints: object[] }[] {
    return [...this.journals.entries()]
      .filter(([name]) => vm === undefined || name === vm)
      .map(([name, j]) => ({
        vm: name,
        checkpoints: j.points().map((p) => ({ id: p.id, time: iso(p.time), kind: p.kind, label: p.label })),
      }));
  }

  status(): JournalStatus[] {
    const now = Date.now();
    return [...this.journals.entries()].map(([vm, j]) => {
      const pts = j.points();
      const pl = j.powerLoss;
      return {
        vm,
        bytes: j.bytes,
        points: pts.length,
        oldestPointAgeMs: pts.length ? now - pts[0].time : null,
        drops: j.drops,
        powerLoss: pl && {
          at: iso(pl.at),
          droppedPoints: pl.dropped,
          message: 'points cannot be proven after a power loss',
        },
      };
    });
  }

  /** The newest `max` points of each VM within the last `spanMs` (the dashboard's timeline). */
  recent(spanMs: number, max: number): Record<string, { id: number; t: number; kind: string; label?: string }[]> {
    const out: Record<string, { id: number; t: number; kind: string; label?: string }[]> = {};
    const from = Date.now() - spanMs;
    for (const [vm, j] of this.journals) {
      const pts = j.points();
      let i = pts.length;
      while (i > 0 && pts.length - i < max && pts[i - 1].time >= from) i--;
      out[vm] = pts.slice(i).map((p) => ({ id: p.id, t: p.time, kind: p.kind, label: p.label }));
    }
    return out;
  }

  close(): void {
    clearInterval(this.timer);
    for (const j of this.journals.values()) j.close();
    this.journals.clear();
  }

  private bind(r: Replica): JournalBinding | null {
    const vm = r.owner?.vm || r.record?.vm;
    if (!vm) return null;
    const j = this.journal(vm);
    return { journal: j, vol: j.volumeIndex(r.name) };
  }

  private volumesOf(vm: string): Replica[] {
    const out: Replica[] = [];
    for (const r of this.replicas.values()) if ((r.owner?.vm || r.record?.vm) === vm) out.push(r);
    return out;
  }

  /** Retention, and an interval point for each VM that wrote since its last point. */
  private tick(): void {
    const now = Date.now();
    for (const [vm, j] of this.journals) {
      const dropped = j.enforce(now, this.cfg.retentionMs, this.cfg.maxBytes);
      if (dropped)
        this.log.info({ vm, dropped, drops: j.drops, bytes: j.bytes }, 'journal retention dropped the oldest points');
      const pts = j.points();
      const last = pts.length ? pts[pts.length - 1].time : 0;
      if (j.capturedSincePoint === 0 || now - last < this.cfg.intervalMs) continue;
      const owner = this.volumesOf(vm).find((r) => r.owner)?.owner;
      // 'marker': taken when the agent's POINT is applied; 'flush': at its next FLUSH marker
      if (!owner || owner.points.ask() !== 'stream') continue;
      // in the stream, once the before-images of the writes before it are recorded (RBD reads them)
      owner.barrier(() => j.captured().then(() => this.point(vm, 'interval'))).catch(() => undefined);
    }
  }
}

export const iso = (t: number): string => new Date(t).toISOString();
