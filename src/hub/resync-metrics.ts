// Bandwidth control's Prometheus metrics, read at each scrape: the hub's --max-resync-rate and
// each agent session's resync rate (bytes of remote-read answers per second, last two seconds).
import { Gauge, Registry } from 'prom-client';

/** A session as the metrics read it. */
export interface ResyncSession {
  vm: string;
  resyncStatus(): { rateBytesPerSec: number };
}

export function registerResyncMetrics(r: Registry, maxResyncRate: number, sessions: Iterable<ResyncSession>): void {
  new Gauge({
    name: 'rephub_resync_max_rate_bytes',
    help: 'The hub-wide cap on resync bytes per second (--max-resync-rate; 0: none)',
    registers: [r],
    collect() {
      this.set(maxResyncRate);
    },
  });
  new Gauge({
    name: 'rephub_resync_rate_bytes',
    help: 'Resync bytes per second received from the VM agent (last 2 s)',
    labelNames: ['vm'],
    registers: [r],
    collect() {
      this.reset();
      for (const s of sessions) if (s.vm) this.set({ vm: s.vm }, s.resyncStatus().rateBytesPerSec);
    },
  });
}
