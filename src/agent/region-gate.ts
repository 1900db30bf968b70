// The one place a region's dirty-log bit is cleared: only when no holder keeps it, that is no
// write in progress on the image, none mirrored and unacked, none owed to or handed over in a
// report the hub has not acked. Cleared bits reach the log file at its periodic sync.
import type { AgentVolume } from './volume';
import type { RegionHolder } from './ports';

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
}
