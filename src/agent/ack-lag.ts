// The agent's view of the RPO lag: how long the oldest mirrored write not yet acked by the hub
// has been waiting, link queue included (the hub's own lag starts when a write reaches it).
// Costs nothing per write: a timer notes the mirror's sequence number every SAMPLE_MS, and the
// lag is read off those samples, rounded up to the sample before the oldest pending write.
// Owns the ring of samples (a bounded window).
import { assert } from '../assert';

export const SAMPLE_MS = 100;
const SAMPLES = 600; // one minute of samples; an older pending write reads as at least a minute

export class AckLag {
  private readonly t = new Float64Array(SAMPLES);
  private readonly seq = new Float64Array(SAMPLES);
  private head = 0; // oldest sample
  private n = 0;

  /** `sent` writes had been sent on this connection at time `now` (ms). */
  sample(sent: number, now: number): void {
    const last = this.n ? this.seq[(this.head + this.n - 1) % SAMPLES] : -1;
    assert(sent >= last, 'sequence numbers only grow on one connection');
    if (this.n === SAMPLES) this.head = (this.head + 1) % SAMPLES;
    else this.n++;
    const i = (this.head + this.n - 1) % SAMPLES;
    this.t[i] = now;
    this.seq[i] = sent;
  }

  /** A new connection numbers its writes from 1 again. */
  reset(): void {
    this.head = this.n = 0;
  }

  /** Age (ms) of the write numbered `oldestPending` (0: none): now minus the last sample before it was sent. */
  lagMs(oldestPending: number, now: number): number {
    if (oldestPending === 0 || this.n === 0) return 0;
    let before = this.t[this.head]; // pending since before the window: at least its age
    for (let k = 0; k < this.n; k++) {
      const i = (this.head + k) % SAMPLES;
      if (this.seq[i] >= oldestPending) break;
      before = this.t[i];
    }
    return Math.max(0, now - before);
  }
}
