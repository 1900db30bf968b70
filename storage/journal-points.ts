// A journal's consistent points, in stream order: ids, the bound on their number, retention
// drops (counted) and the rules a recovery replays (a CHECKPOINT record naming a known id is a
// remark; a DROP record drops the newer ones). Memory only: storage/journal.ts writes the records.
import type { CheckpointKind } from './journal-format';

export interface Checkpoint {
  id: number;
  /** Milliseconds since the epoch. */
  time: number;
  kind: CheckpointKind;
  label?: string;
  /** Where the records after the point start. */
  pos: number;
}

export class PointList {
  private pts: Checkpoint[] = [];
  private nextId = 1;
  /** Points dropped oldest first (retention, size cap, a full list, lost history). */
  drops = 0;

  constructor(private readonly max: number) {}

  get all(): readonly Checkpoint[] {
    return this.pts;
  }

  get length(): number {
    return this.pts.length;
  }

  newId(): number {
    return this.nextId++;
  }

  find(id: number): Checkpoint | undefined {
    return this.pts.find((q) => q.id === id);
  }

  add(p: Checkpoint): void {
    if (this.pts.length >= this.max) this.dropOldest(1);
    this.pts.push(p);
  }

  /** A CHECKPOINT record read back at `pos`: a new point, or a remark of a known one. */
  recover(id: number, time: number, kind: CheckpointKind | undefined, label: string, pos: number): void {
    const known = id < this.nextId ? this.find(id) : undefined;
    if (known) {
      // remark(): the point keeps its place in the stream, with a new kind and label.
      known.kind = kind ?? known.kind;
      if (label) known.label = label;
      return;
    }
    if (id < this.nextId) return; // a remark of a point dropped since
    const p: Checkpoint = { id, time, kind: kind ?? 'interval', pos };
    if (label) p.label = label;
    this.add(p);
    this.nextId = Math.max(this.nextId, id + 1);
  }

  dropOldest(k: number): void {
    if (k <= 0) return;
    this.pts = this.pts.slice(k);
    this.drops += k;
  }

  /** Points newer than `id` go; they are not counted as retention drops (they were never wanted). */
  dropNewer(id: number): void {
    this.pts = this.pts.filter((p) => p.id <= id);
  }

  /** Points whose records start before `pos` (their segment is gone); how many. */
  dropBefore(pos: number): number {
    let k = 0;
    while (k < this.pts.length && this.pts[k].pos < pos) k++;
    this.dropOldest(k);
    return k;
  }

  /** Points older than `retentionMs` at `now`, never the newest; how many. */
  dropOlderThan(now: number, retentionMs: number): number {
    let k = 0;
    while (k < this.pts.length - 1 && now - this.pts[k].time > retentionMs) k++;
    this.dropOldest(k);
    return k;
  }
}
