// Verify across the hub: which volumes an operator's verify (or the periodic scrub) starts on,
// the last run of each volume (kept after its session ends, for /status and /metrics), and the
// scan-rate limit all sessions share. The runs themselves go on in each session's VerifyEngine.
import type { Logger } from '../log';
import { assert } from '../assert';
import type { Replica } from './replica';
import type { VolumeSync } from './sync';
import { VerifyEngine, VerifyPacer, VerifyReport, VerifyRun } from './verify';

/** A verify that cannot start in the hub's current state (HTTP 409). */
export class VerifyRefused extends Error {}

export interface VerifyTargets {
  replicas(): Iterable<Replica>;
  /** The session that has `replica` attached: its verify engine and the volume's sync state. */
  attached(replica: Replica): { engine: VerifyEngine; sync: VolumeSync } | null;
}

export interface VerifyRequest {
  vm?: string;
  volume?: string;
  reportOnly?: boolean;
}

export interface VerifyStarted {
  volumes: { name: string; vm: string | null; id: number }[];
  skipped: { name: string; reason: string }[];
}

/** Differences found since the hub started: a count over every finished run, and the last run that found any. */
export interface VerifyFindings {
  mismatchedRegions: number;
  last: VerifyReport | null;
}

export class VerifyScheduler {
  private readonly runs = new Map<string, VerifyRun>(); // the last run of each volume, by name
  // What finished runs found, by volume: kept past the next run, so a scrub every second does not
  // wipe a finding before a monitor or a scrape reads it.
  private readonly found = new Map<string, VerifyFindings>();
  readonly pacer: VerifyPacer;
  private nextId = 1;
  private readonly timer: NodeJS.Timeout | null = null;

  constructor(
    private readonly targets: VerifyTargets,
    opts: { rateBytesPerSecond: number; everyMs: number },
    private readonly log: Logger,
  ) {
    assert(opts.everyMs >= 0, 'a scrub interval is not negative');
    this.pacer = new VerifyPacer(opts.rateBytesPerSecond);
    if (opts.everyMs > 0) {
      this.timer = setInterval(() => this.scrub(), opts.everyMs);
      this.timer.unref();
    }
  }

  /** Start a verify of the matching attached volumes; one already running is kept, not restarted. */
  start(req: VerifyRequest): VerifyStarted {
    const out: VerifyStarted = { volumes: [], skipped: [] };
    const matching = [...this.targets.replicas()].filter(
      (r) => (req.volume === undefined || r.name === req.volume) && (req.vm === undefined || r.record?.vm === req.vm),
    );
    if (matching.length === 0) {
      throw new VerifyRefused(`no volume matches${req.vm ? ` VM ${req.vm}` : ''}${req.volume ? ` ${req.volume}` : ''}`);
    }
    for (const r of matching) {
      if (r.hold === 'paused') {
        out.skipped.push({ name: r.name, reason: 'paused: its recovery volume is behind by design' });
        continue;
      }
      const at = this.targets.attached(r);
      if (!at || !r.record || !r.bitmap) {
        out.skipped.push({ name: r.name, reason: 'not attached to an agent' });
        continue;
      }
      let run = at.engine.running(at.sync);
      if (!run) {
        run = new VerifyRun(this.nextId++, r.name, r.record.sizeBytes, r.bitmap.regionSize, !!req.reportOnly);
        this.runs.set(r.name, run);
        run.onFinish = (rep) => {
          this.record(r.name, rep);
          this.onResult?.(r.name, rep);
        };
        at.engine.start(at.sync, run);
        this.onResult?.(r.name, run.report);
      }
      out.volumes.push({ name: r.name, vm: r.record.vm ?? null, id: run.report.id });
    }
    if (out.volumes.length === 0) {
      const why = out.skipped.map((s) => `${s.name}: ${s.reason}`).join('; ');
      throw new VerifyRefused(`no matching volume can be verified now (${why})`);
    }
    return out;
  }

  /** Told of each run's start and end (the hub's event bus). */
  onResult: ((volume: string, report: VerifyReport) => void) | null = null;

  /** The last verify of volume `name`, or null if none ran since the hub started. */
  report(name: string): VerifyReport | null {
    return this.runs.get(name)?.report ?? null;
  }

  /** What the verifies of volume `name` found since the hub started. */
  findings(name: string): VerifyFindings {
    return this.found.get(name) ?? { mismatchedRegions: 0, last: null };
  }

  private record(name: string, rep: VerifyReport): void {
    if (rep.mismatchedRegions === 0) return;
    const f = this.findings(name);
    this.found.set(name, { mismatchedRegions: f.mismatchedRegions + rep.mismatchedRegions, last: rep });
  }

  /** The periodic scrub: every attached volume, repairing what differs. */
  private scrub(): void {
    try {
      const r = this.start({});
      this.log.info({ volumes: r.volumes.map((v) => v.name) }, 'periodic verify started');
    } catch (e) {
      this.log.warn({ cause: (e as Error).message }, 'periodic verify not started');
    }
  }

  close(): void {
    if (this.timer) clearInterval(this.timer);
  }
}
