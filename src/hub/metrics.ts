// The hub's Prometheus metrics, read from a HubStatusSource at each scrape: per volume (applied
// and sync bytes, writes, dirty bytes, RPO lag, throughput, state, errors) and per hub.
import { Registry, Gauge, Counter } from 'prom-client';
import type { HubStatusSource, VolumeStatus } from './status-source';
import { VOLUME_STATE_NAMES } from './volume-states';

type VolumeValue<T> = (v: VolumeStatus) => T;

/** Register every metric of the hub on `r`. */
export function registerMetrics(r: Registry, source: HubStatusSource): void {
  registerVolumeMetrics(r, source);
  registerHubMetrics(r, source);
}

function registerVolumeMetrics(r: Registry, source: HubStatusSource): void {
  const vols = () => source.status().volumes;
  const gauge = (name: string, help: string, value: VolumeValue<number | null>) =>
    new Gauge({
      name,
      help,
      labelNames: ['volume', 'vm'],
      registers: [r],
      collect() {
        this.reset();
        for (const v of vols()) {
          const x = value(v);
          if (x !== null) this.set({ volume: v.name, vm: v.vm ?? '' }, x);
        }
      },
    });
  const counter = (name: string, help: string, value: VolumeValue<number>) =>
    new Counter({
      name,
      help,
      labelNames: ['volume', 'vm'],
      registers: [r],
      collect() {
        this.reset();
        for (const v of vols()) this.inc({ volume: v.name, vm: v.vm ?? '' }, value(v));
      },
    });
  counter(
    'rephub_volume_applied_bytes_total',
    'Bytes of mirrored protected writes applied to the recovery volume',
    (v) => v.bytesApplied,
  );
  counter('rephub_volume_applied_writes_total', 'Mirrored protected writes applied', (v) => v.writesApplied);
  counter(
    'rephub_volume_sync_bytes_total',
    'Bytes copied by initial sync and resync (remote reads)',
    (v) => v.syncBytes,
  );
  counter(
    'rephub_volume_errors_total',
    'Recovery volume write/flush failures and failed remote reads',
    (v) => v.errors,
  );
  registerChecksumMetrics(counter);
  counter(
    'rephub_volume_verify_mismatched_regions_total',
    'Regions found different by the online verifies finished since the hub started (the scrub included)',
    (v) => v.verifyFound?.mismatchedRegions ?? 0,
  );
  gauge('rephub_volume_dirty_bytes', 'Bytes of regions that may differ from the protected volume', (v) => v.dirtyBytes);
  gauge('rephub_volume_size_bytes', 'Volume size', (v) => v.sizeBytes);
  gauge(
    'rephub_volume_rpo_lag_seconds',
    'Age of the oldest write not yet durable on the hub (time out of sync when not protecting)',
    (v) => (v.rpoLagMs === null ? null : v.rpoLagMs / 1000),
  );
  gauge('rephub_volume_throughput_bytes_per_second', 'Bytes applied per second, last sample', (v) => v.throughputBps);
  gauge(
    'rephub_volume_sync_pass',
    'Sync passes that found work: sweeps over the dirty bitmap, start to end (since the volume was created)',
    (v) => v.syncPass,
  );
  registerVerifyMetrics(gauge);
  registerAlarmMetrics(gauge, counter);
  registerStateMetric(r, vols);
}

/** Every state a volume can be in as its own 0/1 series, as kube-state-metrics does. */
function registerStateMetric(r: Registry, vols: () => readonly VolumeStatus[]): void {
  new Gauge({
    name: 'rephub_volume_state',
    help: `Volume state: one series per state, 1 for the state the volume is in, 0 for the others (${VOLUME_STATE_NAMES.join(', ')}; docs/STATUS.md)`,
    labelNames: ['volume', 'vm', 'state'],
    registers: [r],
    collect() {
      this.reset();
      for (const v of vols()) {
        for (const state of VOLUME_STATE_NAMES)
          this.set({ volume: v.name, vm: v.vm ?? '', state }, Number(v.state === state));
      }
    },
  });
}

function registerHubMetrics(r: Registry, source: HubStatusSource): void {
  new Gauge({
    name: 'rephub_agents_connected',
    help: 'Connected agent sessions',
    registers: [r],
    collect() {
      this.set(source.sessionsConnected());
    },
  });
  new Counter({
    name: 'rephub_received_bytes_total',
    help: 'Payload bytes received from agents since the hub started (ended sessions included)',
    registers: [r],
    collect() {
      this.reset();
      this.inc(source.receivedBytes());
    },
  });
}

/** The last online verify of each volume (none before the first). */
function registerVerifyMetrics(
  gauge: (name: string, help: string, value: VolumeValue<number | null>) => unknown,
): void {
  gauge('rephub_volume_verify_running', 'An online verify of the volume is running (1) or not (0)', (v) =>
    v.verify ? Number(v.verify.state === 'running') : null,
  );
  gauge(
    'rephub_volume_verify_checked_bytes',
    'Bytes compared by the last (or running) online verify',
    (v) => v.verify?.checkedBytes ?? null,
  );
  gauge(
    'rephub_volume_verify_mismatched_regions',
    'Regions the last (or running) online verify found different on the two sides',
    (v) => v.verify?.mismatchedRegions ?? null,
  );
}

function registerAlarmMetrics(
  gauge: (name: string, help: string, value: VolumeValue<number | null>) => unknown,
  counter: (name: string, help: string, value: VolumeValue<number>) => unknown,
): void {
  gauge(
    'rephub_volume_encryption_alarm',
    'The guest is overwriting its data with random-looking bytes (1), or not (0)',
    (v) => (v.alarm ? Number(v.alarm.active) : null),
  );
  counter('rephub_volume_encryption_alarms_total', 'Encryption alarms raised since the hub started', (v) =>
    v.alarm ? v.alarm.raised : 0,
  );
}

/** Checksum resync (hub/checksum-sync.ts): bytes compared by digest against bytes that had to move. */
function registerChecksumMetrics(counter: (name: string, help: string, value: VolumeValue<number>) => unknown): void {
  counter(
    'rephub_volume_checksum_compared_bytes_total',
    'Checksum resync: bytes of regions compared by digest (no data moved for those found equal)',
    (v) => v.checksumComparedBytes ?? 0,
  );
  counter(
    'rephub_volume_checksum_moved_bytes_total',
    'Checksum resync: bytes read from the protected volume because they differed (or were written meanwhile)',
    (v) => v.checksumMovedBytes ?? 0,
  );
}
