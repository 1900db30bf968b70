// The dashboard's recent past: per volume, one sample a second of the RPO lag, the throughput
// and the dirty bytes, for the last hour, in fixed rings (no allocation per sample: 3 × 3600
// doubles, 84 KiB a volume, at most MAX_VOLUMES volumes), and their downsampled series for the
// page and GET /history (the worst lag, the mean throughput and the most dirty bytes of each
// bucket). A volume gone from status for a whole ring's length is forgotten.
import { assert } from '../assert';

export const HISTORY_SAMPLES = 3600; // one an hour at one a second
const MAX_VOLUMES = 256; // volumes tracked; past it new names are not sampled

/** One volume's series: sample times from `t0` every `stepMs`; null where nothing was known. */
export interface HistorySeries {
  vm: string | null;
  t0: number;
  stepMs: number;
  rpoLagMs: (number | null)[];
  throughputBps: number[];
  dirtyBytes: (number | null)[];
}

/** What a sample reads of a volume's status. */
export interface HistorySample {
  name: string;
  vm: string | null;
  rpoLagMs: number | null;
  throughputBps: number;
  dirtyBytes: number;
}

class Ring {
  readonly lag = new Float64Array(HISTORY_SAMPLES).fill(NaN); // NaN: never in sync, or not sampled
  readonly tput = new Float64Array(HISTORY_SAMPLES);
  readonly dirty = new Float64Array(HISTORY_SAMPLES).fill(NaN); // NaN: not sampled
  lastSeen = 0;
  vm: string | null = null;
}

export class History {
  private readonly rings = new Map<string, Ring>();
  private n = 0; // samples taken (the ring holds the last HISTORY_SAMPLES)
  private lastAt = 0;

  constructor(readonly stepMs = 1000) {
    assert(stepMs > 0, 'a history step is positive');
  }

  /** The longest span kept, ms. */
  get limitMs(): number {
    return HISTORY_SAMPLES * this.stepMs;
  }

  /** One sample of every volume now. */
  sample(now: number, volumes: readonly HistorySample[]): void {
    const i = this.n % HISTORY_SAMPLES;
    for (const v of volumes) {
      let r = this.rings.get(v.name);
      if (!r) {
        if (this.rings.size >= MAX_VOLUMES) continue;
        r = new Ring();
        this.rings.set(v.name, r);
      }
      r.lag[i] = v.rpoLagMs === null ? NaN : v.rpoLagMs;
      r.tput[i] = v.throughputBps;
      r.dirty[i] = v.dirtyBytes;
      r.vm = v.vm;
      r.lastSeen = this.n;
    }
    for (const [name, r] of this.rings) {
      if (r.lastSeen === this.n) continue;
      if (this.n - r.lastSeen >= HISTORY_SAMPLES) this.rings.delete(name); // nothing of it left to show
      r.lag[i] = NaN; // a volume gone from status: no data for this second
      r.tput[i] = 0;
      r.dirty[i] = NaN;
    }
    this.n++;
    this.lastAt = now;
  }

  /**
   * Each volume's history over the last `spanMs` (all of it kept when absent), at most `points`
   * points (buckets of whole samples, the newest bucket ending at the newest sample).
   */
  series(points: number, spanMs = this.limitMs, only?: string): Record<string, HistorySeries> {
    assert(points > 0 && spanMs > 0, 'a series has points and a span');
    const have = Math.min(this.n, HISTORY_SAMPLES, Math.ceil(spanMs / this.stepMs));
    const per = Math.max(1, Math.ceil(have / points));
    const buckets = Math.ceil(have / per);
    const first = this.n - buckets * per; // may be before the oldest kept: those samples count as unknown
    const out: Record<string, HistorySeries> = {};
    for (const [name, r] of this.rings) {
      if (only !== undefined && name !== only) continue;
      const s: HistorySeries = {
        vm: r.vm,
        t0: this.lastAt - (buckets * per - 1) * this.stepMs,
        stepMs: per * this.stepMs,
        rpoLagMs: [],
        throughputBps: [],
        dirtyBytes: [],
      };
      for (let b = 0; b < buckets; b++) bucket(r, first + b * per, per, this.n - have, s);
      out[name] = s;
    }
    return out;
  }
}

/** One bucket of `per` samples from sample `from` (those before `oldest` are not kept) onto `s`. */
function bucket(r: Ring, from: number, per: number, oldest: number, s: HistorySeries): void {
  let lag = -1,
    dirty = -1,
    sum = 0,
    k = 0;
  for (let i = Math.max(from, oldest); i < from + per; i++, k++) {
    const at = i % HISTORY_SAMPLES;
    if (r.lag[at] > lag) lag = r.lag[at]; // NaN compares false: unknown seconds do not count
    if (r.dirty[at] > dirty) dirty = r.dirty[at];
    sum += r.tput[at];
  }
  s.rpoLagMs.push(lag < 0 ? null : lag);
  s.throughputBps.push(k ? Math.round(sum / k) : 0);
  s.dirtyBytes.push(dirty < 0 ? null : dirty);
}
