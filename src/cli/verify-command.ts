// `rephub verify`: starts an online verify on the hub (POST /verify), follows it on /status until
// every volume's run has ended, and prints each mismatched range. Exit code: 0 when both sides
// are equal, 1 when mismatches were found, 2 when the verify could not complete.

export interface VerifyCommandOptions {
  hub: string;
  vm?: string;
  volume?: string;
  reportOnly?: boolean;
  json?: boolean;
}

type Post = (hub: string, action: string, body: object) => Promise<any>;

const POLL_MS = 500;
const MAX_RANGES = 64; // the hub keeps this many ranges per run (src/hub/verify.ts)

async function statusOf(hub: string): Promise<any> {
  const url = hub.replace(/\/$/, '') + '/status';
  const res = await fetch(url).catch((e) => {
    throw new Error(`cannot reach ${url}: ${e.cause?.message ?? e.message}`);
  });
  if (!res.ok) throw new Error(`${url}: HTTP ${res.status}`);
  return res.json();
}

/** Each started volume's report, once it is no longer running (a newer run counts as ended). */
async function waitForRuns(hub: string, started: { name: string; id: number }[]): Promise<any[]> {
  for (;;) {
    const st = await statusOf(hub);
    const reports = started.map((s) => {
      const v = (st.volumes as any[]).find((x) => x.name === s.name);
      const r = v?.verify;
      if (!r || r.id < s.id) throw new Error(`volume ${s.name}: the hub lost verify ${s.id} (did it restart?)`);
      if (r.id > s.id) return { ...r, state: 'failed', error: 'superseded by a newer verify' };
      return r;
    });
    if (reports.every((r) => r.state !== 'running')) return reports;
    await new Promise((res) => setTimeout(res, POLL_MS));
  }
}

function printText(started: { name: string }[], reports: any[], skipped: { name: string; reason: string }[]): void {
  const out: string[] = [];
  for (const s of skipped) out.push(`${s.name}\tskipped: ${s.reason}`);
  reports.forEach((r, i) => {
    const name = started[i].name;
    for (const m of r.mismatches) {
      out.push(
        `${name}\tmismatch\toffset ${m.offset}\tlength ${m.length}${r.reportOnly ? '' : '\t(marked for resync)'}`,
      );
    }
    if (r.mismatches.length >= MAX_RANGES) out.push(`${name}\t(only the first ${MAX_RANGES} ranges are listed)`);
    const verdict =
      r.state === 'failed'
        ? `failed: ${r.error}`
        : r.mismatchedRegions > 0
          ? `${r.mismatchedRegions} regions differ`
          : r.unverifiedRegions > 0
            ? `${r.unverifiedRegions} regions could not be verified (written throughout)`
            : 'equal';
    out.push(`${name}\tchecked ${r.checkedBytes} of ${r.sizeBytes} bytes\t${verdict}`);
  });
  process.stdout.write(out.join('\n') + '\n');
}

/** Runs the command; returns the exit code. */
export async function verifyCommand(o: VerifyCommandOptions, post: Post): Promise<number> {
  const started = await post(o.hub, '/verify', { vm: o.vm, volume: o.volume, reportOnly: !!o.reportOnly });
  const reports = await waitForRuns(o.hub, started.volumes);
  const mismatched = reports.some((r) => r.mismatchedRegions > 0);
  const incomplete = reports.some((r) => r.state === 'failed' || r.unverifiedRegions > 0);
  if (o.json) {
    const volumes = started.volumes.map((s: any, i: number) => ({ name: s.name, ...reports[i] }));
    process.stdout.write(JSON.stringify({ volumes, skipped: started.skipped }, null, 2) + '\n');
  } else {
    printText(started.volumes, reports, started.skipped);
  }
  return mismatched ? 1 : incomplete ? 2 : 0;
}
