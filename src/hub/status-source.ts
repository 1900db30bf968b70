// What the operator's view (monitor, metrics) reads of a hub: an interface the hub satisfies,
// so neither imports the hub.

/** The fields of a volume's status that the metrics read (the hub's /status has more). */
export interface VolumeStatus {
  name: string;
  vm: string | null;
  state: string;
  sizeBytes: number;
  dirtyBytes: number;
  bytesApplied: number;
  writesApplied: number;
  syncBytes: number;
  errors: number;
  rpoLagMs: number | null;
  throughputBps: number;
  syncPass: number;
  /** Checksum resync since the hub started: bytes compared by digest, and bytes read because they differed. */
  checksumComparedBytes?: number;
  checksumMovedBytes?: number;
  /** The last online verify (hub/verify.ts), null before the first. */
  verify?: { state: string; checkedBytes: number; mismatchedRegions: number } | null;
  /** Regions every finished verify found different since the hub started. */
  verifyFound?: { mismatchedRegions: number };
  /** The encryption alarm (hub/encryption-alarm.ts). */
  alarm?: { active: boolean; raised: number; since: string | null };
}

/** What the monitor watches; the hub provides it, and the monitor knows nothing else of the hub. */
export interface HubStatusSource {
  /** The /status document; its other fields pass through to the dashboard. */
  status(): { volumes: readonly VolumeStatus[] };
  sessionsConnected(): number;
  /** Payload bytes received from agents since the hub started: never falls (ended sessions included). */
  receivedBytes(): number;
  /** Each volume's dirty-bitmap density in `cells` cells, 0 to 1 ([] for a volume without a bitmap). */
  heat(cells: number): Record<string, readonly number[]>;
  /** Each VM's newest checkpoints (at most `max`) of the last `spanMs`; absent without a journal. */
  checkpoints?(spanMs: number, max: number): Record<string, { id: number; t: number; kind: string; label?: string }[]>;
}
