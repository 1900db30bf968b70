// The encryption alarm of one recovery volume: notices a guest that starts overwriting its data
// with high-entropy bytes (ransomware encrypting the disk), as Zerto does. Cheap by sampling:
// about one protected write per `sampleEveryBytes` is scored, at most `maxSamplesPerSec` a
// second. A sample compares the write's new bytes with the bytes it overwrites on the recovery
// volume: high-entropy data over low-entropy, non-zero data is a suspicious overwrite. Fresh
// space (zeroes) and data that was random already (compressed files, encrypted swap) are not.
// Each second the estimated rate of suspicious overwrites is compared with the volume's own
// long-run baseline; `sustainSecs` hot seconds in a row raise the alarm. Resync writes are never
// scored (only protected writes reach here). No IO here: the caller reads the old bytes.

export interface AlarmOptions {
  sampleEveryBytes: number; // about one sample per this many bytes written
  maxSamplesPerSec: number;
  sampleBytes: number; // window of each write (and of the old data) scored: 4 pieces spread over it
  highEntropy: number; // bits per byte at or above which bytes look random
  lowEntropy: number; // old data below this looked like data worth encrypting (text, tables)
  minRateBps: number; // suspicious bytes/s below this never alarm
  baselineFactor: number; // ... nor below this many times the volume's baseline
  sustainSecs: number; // hot seconds in a row before the alarm is raised
  baselineSecs: number; // time constant of the baseline (EWMA)
}

export const DEFAULT_ALARM: AlarmOptions = {
  sampleEveryBytes: 256 << 10,
  maxSamplesPerSec: 200,
  sampleBytes: 4096,
  highEntropy: 7.2, // 1 KiB of random bytes estimates at 7.8; text at 4-5
  lowEntropy: 6.0,
  minRateBps: 4 << 20,
  baselineFactor: 8,
  sustainSecs: 3,
  baselineSecs: 300,
};

export interface AlarmStatus {
  active: boolean;
  since: string | null; // ISO time the suspicious run began (the last clean moment is before it)
  suspiciousBps: number; // last second's estimate
  baselineBps: number;
  raised: number; // alarms raised since the hub started
  last: { since: string; until: string } | null; // the last alarm that ended
}

const PIECES = 4;
const PIECE_BYTES = 256;

/** Shannon entropy of `b`, bits per byte (0..8). */
export function entropy(b: Buffer, hist = new Uint32Array(256)): number {
  hist.fill(0);
  for (let i = 0; i < b.length; i++) hist[b[i]]++;
  return fromHistogram(hist, b.length);
}

/**
 * Entropy of 4 pieces of 256 bytes spread over b[0, n): a write whose first half is random and
 * second half is not (compressible data) must not pass for random.
 */
export function spreadEntropy(b: Buffer, n: number, hist = new Uint32Array(256)): number {
  hist.fill(0);
  for (let k = 0; k < PIECES; k++) {
    const at = Math.floor((k * (n - PIECE_BYTES)) / (PIECES - 1));
    for (let i = at; i < at + PIECE_BYTES; i++) hist[b[i]]++;
  }
  return fromHistogram(hist, PIECES * PIECE_BYTES);
}

function fromHistogram(hist: Uint32Array, total: number): number {
  let h = 0;
  for (let v = 0; v < 256; v++) {
    if (hist[v] === 0) continue;
    const p = hist[v] / total;
    h -= p * Math.log2(p);
  }
  return h;
}

export class EncryptionAlarm {
  private budget: number; // bytes until the next sample is due
  private samplesThisSec = 0;
  private bytesThisSec = 0; // all protected bytes written this second
  private sampledThisSec = 0; // bytes of the sampled writes
  private suspiciousThisSec = 0; // bytes of the sampled writes that were suspicious
  private hotRun = 0; // hot seconds in a row
  private runStart = 0; // when the current hot run began (ms)
  private baseline = 0;
  private last = 0;
  private since: number | null = null;
  private raised = 0;
  private lastAlarm: { since: string; until: string } | null = null;
  private readonly hist = new Uint32Array(256);

  constructor(
    private readonly opts: AlarmOptions = DEFAULT_ALARM,
    /** Told once when the alarm is raised (start: when the suspicious run began) and when it ends. */
    private readonly onChange: (active: boolean, start: number, rateBps: number) => void = () => {},
  ) {
    this.budget = opts.sampleEveryBytes;
  }

  /** Should a write of `bytes` be scored (score() before it is applied)? No state changes. */
  due(bytes: number): boolean {
    return this.budget - bytes <= 0 && this.samplesThisSec < this.opts.maxSamplesPerSec;
  }

  /** A protected write of `bytes` was applied (scored or not). */
  count(bytes: number): void {
    this.bytesThisSec += bytes;
    this.budget -= bytes;
  }

  /** Bytes to read from the recovery volume at the write's offset, before it is applied. */
  get sampleBytes(): number {
    return this.opts.sampleBytes;
  }

  /** Score a due write: `data` its new bytes, `old` what the same bytes held before; count() it then. */
  score(data: Buffer, old: Buffer): void {
    this.take(data.length);
    this.judge(data, old, data.length);
  }

  /** A due write of `bytes` is sampled (its old bytes are being read): count() it then, judge() later. */
  take(bytes: number): void {
    this.samplesThisSec++;
    this.budget = this.opts.sampleEveryBytes + bytes; // count() of this write follows
    this.sampledThisSec += bytes;
  }

  /** The sample of a taken write of `bytes`: its first bytes `data`, and `old` that they overwrote. */
  judge(data: Buffer, old: Buffer, bytes: number): void {
    const n = Math.min(old.length, data.length, this.opts.sampleBytes);
    if (n < PIECES * PIECE_BYTES) return;
    if (isZero(old, n) || spreadEntropy(data, n, this.hist) < this.opts.highEntropy) return;
    if (spreadEntropy(old, n, this.hist) >= this.opts.lowEntropy) return;
    this.suspiciousThisSec += bytes;
  }

  /** Close the current second (called once a second). */
  tick(now = Date.now()): void {
    const rate = this.sampledThisSec === 0 ? 0 : (this.suspiciousThisSec / this.sampledThisSec) * this.bytesThisSec;
    this.last = rate;
    this.bytesThisSec = this.sampledThisSec = this.suspiciousThisSec = this.samplesThisSec = 0;
    const hot = rate >= this.opts.minRateBps && rate >= this.opts.baselineFactor * this.baseline;
    // The baseline learns while no alarm is up, so that a long attack does not become normal.
    if (this.since === null) this.baseline += (rate - this.baseline) / this.opts.baselineSecs;
    if (hot) {
      if (this.hotRun++ === 0) this.runStart = now - 1000;
      if (this.hotRun === this.opts.sustainSecs && this.since === null) {
        this.since = this.runStart;
        this.raised++;
        this.onChange(true, this.runStart, rate);
      }
      return;
    }
    this.hotRun = 0;
    if (this.since !== null) {
      const start = this.since;
      this.since = null;
      this.lastAlarm = { since: new Date(start).toISOString(), until: new Date(now).toISOString() };
      this.onChange(false, start, rate);
    }
  }

  status(): AlarmStatus {
    return {
      active: this.since !== null,
      since: this.since === null ? null : new Date(this.since).toISOString(),
      suspiciousBps: Math.round(this.last),
      baselineBps: Math.round(this.baseline),
      raised: this.raised,
      last: this.lastAlarm,
    };
  }
}

function isZero(b: Buffer, n: number): boolean {
  for (let i = 0; i < n; i++) if (b[i] !== 0) return false;
  return true;
}
