// Cheap invariant checks for the hot path, in TigerBeetle's spirit: a broken invariant stops
// the component loudly instead of letting the copies drift apart silently.
export class InvariantError extends Error {
  constructor(message: string) {
    super(`invariant broken: ${message}`);
    this.name = 'InvariantError';
  }
}

/** Throws InvariantError when `cond` is false. The message is a constant: no formatting cost. */
export function assert(cond: unknown, message: string): asserts cond {
  if (!cond) throw new InvariantError(message);
}
