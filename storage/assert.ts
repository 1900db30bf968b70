// storage/ imports nothing from src/: its own cheap invariant check (as src/assert.ts).
export function assert(cond: unknown, message: string): asserts cond {
  if (!cond) throw new Error(`invariant broken: ${message}`);
}
