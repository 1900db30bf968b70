// A recovery volume's counters for /status and /metrics: bytes of protected writes applied and
// of sync written, faults, the throughput sampled each second, and the checksum resync's totals
// since the hub started. Counters only; the Replica owns one and reports it in its status.
export class ReplicaStats {
  applied = 0; // bytes of protected writes applied
  appliedWrites = 0;
  faults = 0; // failed writes of the recovery volume and failed remote reads
  synced = 0; // bytes written by sync
  syncedAtDrop = 0; // `synced` when the sync's cached pages were last dropped
  throughputBps = 0; // bytes/s applied (mirrored writes + sync), last sample
  checksumCompared = 0;
  checksumMoved = 0;
  private sampled = { at: Date.now(), bytes: 0 };

  /** Close a sampling interval (the hub calls this each second). */
  sample(now: number): void {
    const bytes = this.applied + this.synced;
    if (now > this.sampled.at)
      this.throughputBps = Math.round(((bytes - this.sampled.bytes) * 1000) / (now - this.sampled.at));
    this.sampled = { at: now, bytes };
  }
}
