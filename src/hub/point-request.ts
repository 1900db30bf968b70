// Where the hub may take a journal point on one agent connection other than at a guest FLUSH
// (SPEC.md 7.4): an interval point, a tag, a failover test's view. A guest write the agent owes
// by DIRTY_REPORT (a zeroing, a write past its link queue) reaches the hub up to ~10 ms after
// later writes, so a point of the applied stream picked by the hub alone may hold a later write
// without an earlier completed one. Owns the connection's one outstanding POINT request and the
// once-per-connection warning for an agent that cannot vouch; runs a failover test's barrier at
// the next of those points.
import { Cap, ProtocolError, encodePoint } from '../../protocol';
import type { Logger } from '../log';

/**
 * `stream`: the agent can owe nothing (no DIRTY_REPORT), any barrier is a guest state;
 * `marker`: a POINT was asked of the agent, the point is taken when its answer is applied;
 * `flush`: the agent cannot vouch (DIRTY_REPORT without POINT): only its next FLUSH marker.
 */
export type PointSource = 'stream' | 'marker' | 'flush';

export interface PointLink {
  has(cap: number): boolean;
  send(bufs: Buffer[]): void;
}

/** The session's apply queue (apply-queue.ts): its barriers run at a point of the stream. */
export interface PointQueue {
  barrier<T>(fn: () => Promise<T> | T): Promise<T>;
  barrierAtFlush<T>(fn: () => Promise<T> | T, waitMs: number): Promise<T>;
}

export class PointRequests {
  private asked = false; // a POINT request is out, not answered yet (at most one: SPEC 5.20)
  private warned = false;

  constructor(
    private readonly link: PointLink,
    private readonly queue: PointQueue,
    private readonly log: Logger,
    private readonly vm: () => string,
  ) {}

  /** Where the next point may be taken; asks the agent for a POINT when it can mark one. */
  ask(): PointSource {
    if (!this.link.has(Cap.DIRTY_REPORT)) return 'stream';
    if (this.link.has(Cap.POINT)) {
      if (!this.asked) {
        this.asked = true;
        this.link.send([encodePoint(0)]);
      }
      return 'marker';
    }
    if (!this.warned) {
      this.warned = true;
      this.log.warn(
        { vm: this.vm() },
        'agent cannot mark consistent points (no POINT capability): journal points only at its FLUSH markers',
      );
    }
    return 'flush';
  }

  /**
   * Run `fn` at the agent's next FLUSH marker, or at its POINT, asked for now when it can mark
   * one (a FLUSH point is no more consistent than a POINT: both are prefixes of what the guest
   * completed); at the current point if none is applied within `waitMs` (failover.ts).
   */
  atFlush<T>(fn: () => Promise<T> | T, waitMs: number): Promise<T> {
    if (this.link.has(Cap.POINT)) {
      this.ask(); // whatever else it negotiated: only its marker vouches for the stream
      return this.queue.barrierAtFlush(fn, waitMs);
    }
    if (!this.link.has(Cap.FLUSH)) return this.queue.barrier(fn);
    return this.queue.barrierAtFlush(fn, waitMs);
  }

  /** The agent's POINT was applied: the next one may be asked. A POINT never asked for is refused. */
  answered(): void {
    if (!this.asked) throw new ProtocolError('POINT the hub did not ask for (SPEC.md 5.20)');
    this.asked = false;
  }
}
