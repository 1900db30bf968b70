// Human-readable status tables for the CLIs.

export function lagText(ms: number | null): string {
  return ms === null ? 'never' : ms < 1000 ? `${ms}ms` : `${(ms / 1000).toFixed(1)}s`;
}

export function renderStatus(st: any, bars: boolean): string {
  const out: string[] = [];
  if (st.failover) out.push(`FAILED OVER since ${st.failover.since}`);
  if (st.failoverTest) out.push(`failover test running since ${st.failoverTest.startedAt}`);
  const rows = st.volumes.map((v: any) => {
    const pct = v.sizeBytes ? 100 * (1 - v.dirtyBytes / v.sizeBytes) : 0;
    const sync = bars ? `${'#'.repeat(Math.round(pct / 5)).padEnd(20, '.')} ${pct.toFixed(1)}%` : `${pct.toFixed(1)}%`;
    return [
      v.name,
      v.state,
      v.vm ?? '-',
      fmt(v.sizeBytes),
      fmt(v.dirtyBytes),
      sync,
      String(v.syncPass),
      lagText(v.rpoLagMs),
      `${fmt(v.throughputBps)}/s`,
      v.recovery,
      v.lastError ?? '',
    ];
  });
  out.push(
    table([
      ['VOLUME', 'STATE', 'VM', 'SIZE', 'DIRTY', 'IN SYNC', 'PASS', 'RPO LAG', 'THROUGHPUT', 'RECOVERY', 'LAST ERROR'],
      ...rows,
    ]),
  );
  for (const j of st.journals ?? []) out.push(journalLine(j));
  out.push(
    `${st.agents.length} agent(s) connected${st.agents.length ? ': ' + st.agents.map((a: any) => a.vm || `session ${a.session}`).join(', ') : ''}`,
  );
  return out.join('\n') + '\n';
}

/** One VM journal: its points, the oldest one's age, its size, the drops, and a power loss. */
function journalLine(j: any): string {
  const age = j.oldestPointAgeMs === null ? 'none' : `oldest ${lagText(j.oldestPointAgeMs)} ago`;
  const lost = j.powerLoss
    ? ` JOURNAL POWER LOSS at ${j.powerLoss.at}: ${j.powerLoss.message} (${j.powerLoss.droppedPoints} dropped)`
    : '';
  return `journal ${j.vm}: ${j.points} checkpoints, ${age}, ${fmt(j.bytes)}, ${j.drops} dropped${lost}`;
}

export function fmt(n: number): string {
  const u = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let i = 0;
  while (n >= 1024 && i < u.length - 1) {
    n /= 1024;
    i++;
  }
  return `${i ? n.toFixed(1) : n}${u[i]}`;
}
export function table(rows: string[][]): string {
  const w = rows[0].map((_, i) => Math.max(...rows.map((r) => r[i].length)));
  return rows
    .map((r) =>
      r
        .map((c, i) => c.padEnd(w[i]))
        .join('  ')
        .trimEnd(),
    )
    .join('\n');
}
