// GET /history on the hub's HTTP API: each volume's recent RPO lag, throughput and dirty bytes
// (history.ts), for the dashboard's plots and for scripts. Query: span (a duration like 90s, 15m
// or 1h, or seconds; default 15m, at most the history kept), points (at most this many per
// series, default one per sample), volume (only that one). A bad query is a 400 naming the field.
import { BadRequest, MoreRoutes } from './http-api';
import type { History, HistorySeries } from './history';

const DEFAULT_SPAN_MS = 15 * 60_000;
const MAX_POINTS = 3600;

/** The /history document. */
export interface HistoryDoc {
  /** When it was taken, ms since the epoch. */
  at: number;
  spanMs: number;
  /** One sample every sampleMs; the span can be at most limitMs. */
  sampleMs: number;
  limitMs: number;
  volumes: Record<string, HistorySeries>;
}

function spanOf(v: string | null, limitMs: number): number {
  if (v === null) return Math.min(DEFAULT_SPAN_MS, limitMs);
  const m = /^(\d+)(s|m|h)?$/.exec(v.trim());
  if (!m) throw new BadRequest(`span ${JSON.stringify(v)}: expected a duration like 90s, 15m or 1h`);
  const ms = Number(m[1]) * { s: 1000, m: 60_000, h: 3_600_000 }[(m[2] ?? 's') as 's' | 'm' | 'h'];
  if (ms < 1000 || ms > limitMs) throw new BadRequest(`span ${v}: from 1s to ${limitMs / 1000}s (the history kept)`);
  return ms;
}

function pointsOf(v: string | null, spanMs: number, sampleMs: number): number {
  if (v === null) return Math.min(MAX_POINTS, Math.ceil(spanMs / sampleMs));
  const n = Number(v);
  if (!Number.isInteger(n) || n < 1 || n > MAX_POINTS)
    throw new BadRequest(`points ${v}: a whole number, 1 to ${MAX_POINTS}`);
  return n;
}

export function historyDoc(history: History, query: URLSearchParams, now = Date.now()): HistoryDoc {
  const spanMs = spanOf(query.get('span'), history.limitMs);
  const points = pointsOf(query.get('points'), spanMs, history.stepMs);
  const volume = query.get('volume') ?? undefined;
  const volumes = history.series(points, spanMs, volume);
  if (volume !== undefined && !volumes[volume]) throw new BadRequest(`volume ${volume}: no history (unknown volume)`);
  return { at: now, spanMs, sampleMs: history.stepMs, limitMs: history.limitMs, volumes };
}

export function historyRoutes(history: History): MoreRoutes {
  return {
    get: (path, query) => (path === '/history' ? historyDoc(history, query) : undefined),
    post: {},
    stream: {},
  };
}
