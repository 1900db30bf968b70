// The one place a region's dirty-log bit is cleared: only when no holder keeps it, that is no
// write in progress on the image, none mirrored and unacked, none owed to or handed over in a
// report the hub has not acked. Cleared bits reach the log file at its periodic sync.
import type { AgentVolume } from './volume';
import type { RegionHolder } from './ports';
import type { DirtyBitmap } from '../../storage/bitmap';

export class RegionGate {
  private readonly holders: RegionHolder[] = [];

  /** Register a module whose state can keep a region dirty. */
  watch(holder: RegionHolder): void {
    this.holders.push(holder);
  }

  /** Clear region r's dirty bit unless something newer than the hub's copy is still in flight. */
  clearIfQuiet(v: AgentVolume, region: number): boolean {
    for (const h of this.holders) if (h.holds(v, region)) return false;
    v.log.clear(region);
    return true;
  }

  /**
   * clearIfQuiet for every region of [first, last], in runs: a report's ack covers up to the
   * whole volume, and region by region a fresh 1 TiB volume held the agent's loop (the guest's
   * IO with it) for ~2 s.
   */
  clearQuiet(v: AgentVolume, first: number, last: number): void {
    const held: number[] = [];
    for (const h of this.holders) h.heldRuns(v, first, last, held);
    const order: number[] = [];
    for (let i = 0; i < held.length; i += 2) order.push(i);
    order.sort((i, j) => held[i] - held[j]);
    let from = first;
    for (const i of order) {
      const a = Math.max(held[i], first),
        b = Math.min(held[i + 1], last + 1);
      if (a > from) v.log.clearRange(from, a - 1);
      from = Math.max(from, b);
    }
    if (from <= last) v.log.clearRange(from, last);
  }
}

/** Push the dirty runs of `map` within [first, last] onto `out` as flat [a, b) pairs. */
export function dirtyRunsIn(map: DirtyBitmap, first: number, last: number, out: number[]): void {
  for (const [a, b] of map.runs(first)) {
    if (a > last) break;
    out.push(a, b);
  }
}

/** Push the keys of `regions` within [first, last] onto `out` as single-region runs. */
export function keysIn(regions: Map<number, unknown>, first: number, last: number, out: number[]): void {
  for (const r of regions.keys()) if (r >= first && r <= last) out.push(r, r + 1);
}
