// The V8 heap flags the hub and the agent run with: their bins start Node with them (the
// `#!/usr/bin/env -S node …` line of rephub.ts and rephub-agent.ts) and rephub-qemu passes them to
// the agent it starts. V8 (11.3, Node 20) counts every ArrayBuffer allocated since the last full
// GC against the old generation's limit, and under small writes both daemons allocate socket
// slabs (src/net-read.ts) at the data rate, ~170 MB/s at 4 KiB qd16. With ~10 MB live, the limit
// sat near 42 MB and those bytes started a mark-compact every 100-150 ms in each process: about
// 19 % of the agent's CPU and 9 % of the hub's (docs/BENCHMARKS.md Round 20). A floor under the
// limit stops it; it costs at most that much garbage before a full GC, nothing up front. It only
// works on Node's command line: set at run time (v8.setFlagsFromString) the heap is sized already.
import type { Logger } from 'pino';

export const HEAP_FLAGS: readonly string[] = ['--initial-old-space-size=96'];

/** The bins' first line: Node with the heap flags (`env -S`: coreutils 8.30 or later, BSD env). */
export const SHEBANG = `#!/usr/bin/env -S node ${HEAP_FLAGS.join(' ')}`;

/** A flag's name, as V8 reads it (`_` and `-` alike), without its value. */
const flagName = (f: string): string => f.split('=')[0].replace(/_/g, '-');

/** The heap flags this process was started without (given with any value counts as given). */
export function missingHeapFlags(execArgv: readonly string[] = process.execArgv): string[] {
  const given = new Set(execArgv.map(flagName));
  return HEAP_FLAGS.filter((f) => !given.has(flagName(f)));
}

/** Said once at start when Node was run by hand without them (the daemon works, at more CPU). */
export function noteHeapFlags(log: Logger): void {
  const missing = missingHeapFlags();
  if (missing.length === 0) return;
  log.info({ missing }, 'node started without the heap flags of the rephub bins: more CPU goes to garbage collection');
}
