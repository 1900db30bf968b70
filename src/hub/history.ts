// The dashboard's recent past: per volume, one sample a second of the RPO lag and the
// throughput, for the last hour, in fixed rings (no allocation per sample), and their
// downsampled series for the page (the worst lag and the mean throughput of each bucket).
import { assert } from '../assert';

export const HISTORY_SAMPLES = 3600; // one an hour at one a second
const MAX_VOLUMES = 256; // volumes tracked; past it new names are not sampled

/** One series for the page: sample times from `t0` every `stepMs`; null where nothing was known. */
export interface HistorySeries {
  t0: number;
  stepMs: number;
  rpoLagMs: (number | null)[];
  throughputBps: number[];
}

class Ring {
  readonly lag = new Float64Array(HISTORY_SAMPLES); // NaN: never in sync
  readonly tput = new Float64Array(HISTORY_SAMPLES);
  lastSeen = 0;
}

export class History {
  private readonly rings = new Map<string, Ring>();
  private n = 0; // samples taken (the ring holds the last HISTORY_SAMPLES)
  private lastAt = 0;

  constructor(readonly stepMs = 1000) {
    assert(stepMs > 0, 'a history step is positive');
  }

  /** One sample of every volume now. */
  sample(now: number, volumes: readonly { name: string; rpoLagMs: number | null; throughputBps: number }[]): void {
    const i = this.n % HISTORY_SAMPLES;
    for (const v of volumes) {
      let r = this.rings.get(v.name);
      if (!r) {
        if (this.rings.size >= MAX_VOLUMES) continue;
        r = new Ring();
        r.lag.fill(NaN);
        this.rings.set(v.name, r);
      }
      r.lag[i] = v.rpoLagMs === null ? NaN : v.rpoLagMs;
      r.tput[i] = v.throughputBps;
      r.lastSeen = this.n;
    }
    for (const r of this.rings.values()) {
      if (r.lastSeen !== this.n) {
        r.lag[i] = NaN; // a volume gone from status: no data for this second
        r.tput[i] = 0;
      }
    }
    this.n++;
    this.lastAt = now;
  }

  /** Each volume's history, at most `points` points (buckets of whole samples). */
  series(points: number): Record<string, HistorySeries> {
    assert(points > 0, 'a series has points');
    const have = Math.min(this.n, HISTORY_SAMPLES);
    const per = Math.max(1, Math.ceil(have / points));
    const buckets = Math.ceil(have / per);
    const first = this.n - have; // the oldest sample kept
    const out: Record<string, HistorySeries> = {};
    for (const [name, r] of this.rings) {
      const lag: (number | null)[] = [],
        tput: number[] = [];
      for (let b = 0; b < buckets; b++) {
        let worst = -1,
          sum = 0,
          k = 0;
        for (let s = first + b * per; s < Math.min(this.n, first + (b + 1) * per); s++, k++) {
          const x = r.lag[s % HISTORY_SAMPLES];
          if (!Number.isNaN(x) && x > worst) worst = x;
          sum += r.tput[s % HISTORY_SAMPLES];
        }
        lag.push(worst < 0 ? null : worst);
        tput.push(k ? Math.round(sum / k) : 0);
      }
      out[name] = {
        t0: this.lastAt - (have - 1) * this.stepMs,
        stepMs: per * this.stepMs,
        rpoLagMs: lag,
        throughputBps: tput,
      };
    }
    return out;
  }
}
