// The bandwidth flags of both daemons, parsed and checked before anything starts: the agent's
// --max-rate, --resync-share and --max-resync-rate (link/pacer.ts), the hub's --max-resync-rate
// (hub/resync-controller.ts). Sizes go through the same parser as every other size flag.
import type { PacerOptions } from '../link/pacer';
import { ResyncRateLimit } from '../hub/resync-rate';
import { parseSize } from './args';

export interface AgentBandwidthFlags {
  maxRate: string;
  resyncShare: string;
  maxResyncRate: string;
}

const MIN_RATE = 64 << 10; // below this a cap is a typo (64K for 64M), not a link

/** A rate in bytes/s (`50M`, `0` for none), at least MIN_RATE when set. */
export function parseRate(v: string, flag: string): number {
  const n = parseSize(v, flag);
  if (n !== 0 && n < MIN_RATE) throw new Error(`${flag}: ${v} is below 64K bytes/s; give 0 for no cap`);
  return n;
}

/** "30" or "30%": a fraction 0..1. */
export function parsePercent(v: string, flag: string): number {
  const m = /^(\d+(?:\.\d+)?)%?$/.exec(v.trim());
  if (!m || Number(m[1]) > 100) throw new Error(`${flag}: expected a percentage 0..100, got "${v}"`);
  return Number(m[1]) / 100;
}

/** The agent's pacer, or undefined without --max-rate (no pacing at all). */
export function agentBandwidth(o: AgentBandwidthFlags): PacerOptions | undefined {
  const maxRate = parseRate(o.maxRate, '--max-rate');
  const resyncShare = parsePercent(o.resyncShare, '--resync-share');
  const maxResyncRate = parseRate(o.maxResyncRate, '--max-resync-rate');
  if (maxRate === 0) {
    if (maxResyncRate !== 0)
      throw new Error("--max-resync-rate on the agent needs --max-rate (or give the hub's --max-resync-rate)");
    return undefined;
  }
  return { maxRate, resyncShare, maxResyncRate };
}

/** The hub's --max-resync-rate, one limit for all its sessions; undefined for none. */
export function hubResyncLimit(v: string, flag = '--max-resync-rate'): ResyncRateLimit | undefined {
  const rate = parseRate(v, flag);
  return rate ? new ResyncRateLimit(rate) : undefined;
}
