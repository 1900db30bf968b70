// A fuzz campaign's options, its findings as they accumulate, and how they are printed (the
// tally line is what CI and docs/FAULTS.md quote).

const MiB = 1 << 20;

export interface CampaignOptions {
  frames: number;
  conns: number;
  seed: number;
  /** A hub already running (else one is spawned from dist/src/cli/rephub.js). */
  hub?: { host: string; port: number; http: string; pid?: number };
  goodVolume?: string; // default V1
  imageMiB?: number; // size of the good agent's image (spawned hub, or a foreign hub without a replica yet)
  fuzzVolumes?: number; // FZ1.. recovery volumes fuzz sessions may own (spawned hub)
  hangMs?: number; // a session that should have ended and did not within this is a hang
  silentPeers?: number; // HELLO+PING-cap peers that then go silent: the hub must drop them (~8 s each)
  bigFrames?: number; // frames of up to 32 MiB reassembled by the hub
  bigDirtyBytes?: number; // budget of ~1 MiB DIRTY_REPORTs (65536 and 65537 extents)
  floodBytes?: number; // PINGs sent by a non-reading peer, per flood session
  maxRssMiB?: number; // failure bound on the hub's peak RSS (0: report only)
  convergeMs?: number;
  keep?: boolean; // keep the temporary directory
  log?: (line: string) => void;
}

export interface CampaignResult {
  frames: number;
  bytes: number;
  sessions: number;
  closedWithError: number;
  closedAfterFin: number;
  crashes: number;
  hangs: number;
  maxRssMiB: number;
  rssSamples: number;
  expectedErrors: number;
  missingError: number;
  mismatches: number;
  pongMissing: number;
  protocolViolations: number;
  hubBadFrames: number;
  lingering: number;
  claimants: number;
  claimantsRefused: number;
  claimantStartProtect: number;
  owners: number;
  ownerRefused: number;
  silentDropped: number;
  floods: number;
  floodPongs: number;
  bigFrames: number;
  scenarios: Record<string, number>;
  errorCodes: Record<string, number>;
  observations: Record<string, number>;
  predicted: Record<string, number>; // sessions by the error the model predicted (what each stream tested)
  good: { converged: boolean; detail: string; writes: number; connects: number };
  failures: string[];
  durationMs: number;
  dir: string;
  hubLog: string;
}

export function tally(r: CampaignResult): string {
  return (
    `fuzz: frames=${r.frames} sessions=${r.sessions} closedWithError=${r.closedWithError} crashes=${r.crashes} hangs=${r.hangs} ` +
    `maxRssMiB=${r.maxRssMiB.toFixed(1)} good session: ${r.good.converged ? 'converged byte-equal' : `NOT converged (${r.good.detail})`}`
  );
}

export function details(r: CampaignResult): string[] {
  const kv = (o: Record<string, number>) =>
    Object.entries(o)
      .sort()
      .map(([k, v]) => `${k}=${v}`)
      .join(' ');
  return [
    `  scenarios: ${kv(r.scenarios)}`,
    `  hub ERROR codes: ${kv(r.errorCodes)}  (1 PROTOCOL, 2 UNKNOWN_VOLUME, 3 OUT_OF_RANGE, 4 VOLUME_REFUSED, 5 IO)`,
    `  predicted endings: ${Object.entries(r.predicted)
      .sort((a, b) => b[1] - a[1])
      .map(([k, v]) => `${k}: ${v}`)
      .join(', ')}`,
    `  expected errors ${r.expectedErrors}, closed after our FIN ${r.closedAfterFin}, missing ERROR ${r.missingError}, wrong ERROR ${r.mismatches}, ` +
      `PONG missing ${r.pongMissing}, hub protocol violations ${r.protocolViolations}, malformed hub frames ${r.hubBadFrames}, ` +
      `sessions left on the hub ${r.lingering}`,
    `  claimants ${r.claimants} (refused ${r.claimantsRefused}, got START_PROTECT ${r.claimantStartProtect}), owner sessions ${r.owners} (refused ${r.ownerRefused}), ` +
      `silent peers dropped ${r.silentDropped}, PING floods ${r.floods} (${r.floodPongs} PONGs), big frames ${r.bigFrames}, bytes sent ${(r.bytes / MiB).toFixed(1)} MiB`,
    `  good agent: ${r.good.writes} writes, ${r.good.connects} connect(s); ${r.good.detail}`,
    ...(Object.keys(r.observations).length
      ? [`  observations (spec deviations, not failures): ${kv(r.observations)}`]
      : []),
    `  rss samples ${r.rssSamples}, duration ${(r.durationMs / 1000).toFixed(1)} s, hub log ${r.hubLog}`,
  ];
}

/** A result with nothing counted yet. */
export function emptyResult(dir: string): CampaignResult {
  return {
    frames: 0,
    bytes: 0,
    sessions: 0,
    closedWithError: 0,
    closedAfterFin: 0,
    crashes: 0,
    hangs: 0,
    maxRssMiB: 0,
    rssSamples: 0,
    expectedErrors: 0,
    missingError: 0,
    mismatches: 0,
    pongMissing: 0,
    protocolViolations: 0,
    hubBadFrames: 0,
    lingering: 0,
    claimants: 0,
    claimantsRefused: 0,
    claimantStartProtect: 0,
    owners: 0,
    ownerRefused: 0,
    silentDropped: 0,
    floods: 0,
    floodPongs: 0,
    bigFrames: 0,
    scenarios: {},
    errorCodes: {},
    observations: {},
    predicted: {},
    good: { converged: false, detail: 'not checked', writes: 0, connects: 0 },
    failures: [],
    durationMs: 0,
    dir,
    hubLog: '',
  };
}

/** A failed check (the first 40 are kept). */
export function fail(r: CampaignResult, what: string): void {
  if (r.failures.length < 40) r.failures.push(what);
}

export function bump(counts: Record<string, number>, key: string): void {
  counts[key] = (counts[key] ?? 0) + 1;
}
