// What the hub's and the agent's /status documents share: the schema version (docs/STATUS.md;
// bumped when a field changes meaning or goes away, not when one is added) and capability masks
// as names, so an operator never decodes a bitmask.
import { Cap } from '../protocol';

export const STATUS_SCHEMA = 1;

/** The names of the capability bits set in `mask`, in bit order; unknown bits as `bitN`. */
export function capNames(mask: number): string[] {
  const out: string[] = [];
  for (let bit = 0; bit < 32; bit++) {
    const v = 2 ** bit;
    if (Math.floor(mask / v) % 2 === 0) continue;
    const name = Object.entries(Cap).find(([, b]) => b === v)?.[0];
    out.push(name ? name.toLowerCase() : `bit${bit}`);
  }
  return out;
}
