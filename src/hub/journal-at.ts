// What `--at` accepts: a checkpoint id, an ISO 8601 time, a relative time ("10 min ago",
// "90s ago", "2 hours ago"), or "latest". Pure parsing; the journal picks the point.

export interface At {
  latest?: boolean;
  id?: number;
  /** Milliseconds since the epoch: the newest point at or before it. */
  time?: number;
}

const UNITS: Record<string, number> = {
  s: 1000,
  sec: 1000,
  second: 1000,
  m: 60_000,
  min: 60_000,
  minute: 60_000,
  h: 3_600_000,
  hour: 3_600_000,
  d: 86_400_000,
  day: 86_400_000,
};

export function parseAt(at: string, now: number): At {
  const v = at.trim();
  if (v === 'latest') return { latest: true };
  if (/^\d+$/.test(v)) return { id: Number(v) };
  const rel = /^(\d+(?:\.\d+)?)\s*([a-z]+?)s?\s+ago$/i.exec(v);
  if (rel) {
    const unit = UNITS[rel[2].toLowerCase()];
    if (!unit) throw new Error(`--at "${at}": unknown unit "${rel[2]}" (s, min, h, d)`);
    return { time: now - Number(rel[1]) * unit };
  }
  const t = /^\d{4}-\d{2}-\d{2}/.test(v) ? Date.parse(v) : NaN;
  if (Number.isNaN(t))
    throw new Error(`--at "${at}": expected a checkpoint id, an ISO 8601 time, "10 min ago" or latest`);
  return { time: t };
}
