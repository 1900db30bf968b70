// The journal's Prometheus metrics, per VM, read from the journals at each scrape: bytes,
// points, the oldest point's age, the points retention dropped, and a power loss found at start.
import { Counter, Gauge, Registry } from 'prom-client';
import type { HubJournals } from './journal';

type Stat = ReturnType<HubJournals['status']>[number];

export function registerJournalMetrics(r: Registry, journals: HubJournals): void {
  const gauge = (name: string, help: string, value: (s: Stat) => number | null) =>
    new Gauge({
      name,
      help,
      labelNames: ['vm'],
      registers: [r],
      collect() {
        this.reset();
        for (const s of journals.status()) {
          const x = value(s);
          if (x !== null) this.set({ vm: s.vm }, x);
        }
      },
    });
  gauge('rephub_journal_bytes', 'Bytes in the VM journal', (s) => s.bytes);
  gauge('rephub_journal_points', 'Checkpoints in the VM journal', (s) => s.points);
  gauge('rephub_journal_oldest_point_age_seconds', 'Age of the oldest checkpoint', (s) =>
    s.oldestPointAgeMs === null ? null : s.oldestPointAgeMs / 1000,
  );
  new Counter({
    name: 'rephub_journal_dropped_points_total',
    help: 'Checkpoints dropped by retention (age, size or count)',
    labelNames: ['vm'],
    registers: [r],
    collect() {
      this.reset();
      for (const s of journals.status()) this.inc({ vm: s.vm }, s.drops);
    },
  });
  gauge(
    'rephub_journal_power_loss',
    'The journal was open across a power loss: its points cannot be proven and were all dropped at start (1)',
    (s) => (s.powerLoss ? 1 : 0),
  );
  gauge('rephub_journal_power_loss_dropped_points', 'Checkpoints dropped at start after a power loss', (s) =>
    s.powerLoss ? s.powerLoss.droppedPoints : 0,
  );
}
