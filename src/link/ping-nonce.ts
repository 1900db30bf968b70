// PING nonces of this process: millisecond timestamps, strictly increasing. A PONG's nonce then
// names one PING: the agent's resync governor matches its own probes by nonce (an opening probe
// sent behind answers must not be mistaken for a heartbeat sent in the same millisecond).
let last = 0;

/** A nonce for a PING sent at `at` (ms): `at`, or 1 past the last nonce when that is later. */
export function pingNonce(at: number = Date.now()): number {
  last = Math.max(at, last + 1);
  return last;
}
