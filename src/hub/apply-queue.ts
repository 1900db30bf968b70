// The apply queue of one agent session: every received frame that touches storage, and every
// barrier, runs here one at a time in arrival order, so a VM's writes land in the order sent
// across all its volumes. Owns the queue, its byte count and the back-pressure it asks for,
// barriers, and the hooks waiting for the agent's next FLUSH. It applies a frame by calling
// its handler; it knows nothing of what a frame does.
import { Cmd, Message } from '../../protocol';
import { assert } from '../assert';

export interface ApplyHandler {
  /** Apply one frame; the queue waits for it before the next. */
  apply(msg: Message): Promise<void> | void;
  /** A frame was applied: nothing refers to its payload any more. */
  applied(payload: Buffer): void;
  /** The queue ran empty (commit and read on from here). */
  idle(): void;
  /** Applying a frame threw: the session ends. */
  failed(e: Error): void;
  /** Stop (true) or resume (false) receiving: the queue holds too many bytes, or room again. */
  pause(paused: boolean): void;
}

/** A received frame to apply, or a barrier to run at this point of the stream. */
type Item =
  | { msg: Message; payload: Buffer; bytes: number; run?: undefined }
  | { msg?: undefined; payload?: undefined; bytes: 0; run: () => Promise<void> | void };

/**
 * A payload the queue may keep: one under 64 KiB can be a view of a socket slab
 * (src/net-read.ts; larger ones are the pool's) and, queued as such, would pin the whole slab
 * where maxQueueBytes counts only its own bytes.
 */
export function owned(payload: Buffer): Buffer {
  if (payload.length >= 65536 || payload.buffer.byteLength <= 4 * payload.length) return payload;
  const own = Buffer.allocUnsafeSlow(payload.length);
  payload.copy(own);
  return own;
}

const COMPACT_AT = 1024; // applied entries kept before the array is cut down

export class ApplyQueue {
  private items: Item[] = [];
  private head = 0; // next item to apply
  private bytes = 0; // payload bytes queued and not yet applied
  private paused = false;
  private draining = false;
  private closed = false;
  private broken = false; // a frame failed to apply: nothing after it is applied
  private finishing = false; // the transport ended: no idle(), nobody reads on
  private current: Promise<void> = Promise.resolve(); // the drain under way
  private afterClose: Promise<void> = Promise.resolve(); // barriers left at close, then any asked later
  private flushHooks: (() => Promise<void>)[] = [];

  constructor(
    private readonly handler: ApplyHandler,
    private readonly maxBytes: number,
  ) {
    assert(maxBytes > 0, 'the apply queue has room for something');
  }

  /** Nothing queued and nothing being applied: a frame may be applied at once, inline. */
  get idle(): boolean {
    return !this.draining && this.head === this.items.length;
  }

  /** Queue a received frame; `payload` must be owned by the frame (no view of a socket slab). */
  push(msg: Message, payload: Buffer): void {
    this.enqueue({ msg, payload, bytes: payload.length });
  }

  /**
   * Run `fn` at the current point of this VM's write stream: after every frame received so far
   * is applied and before any later one. A failover-test freeze taken here is consistent
   * across the VM's volumes.
   */
  barrier<T>(fn: () => Promise<T> | T): Promise<T> {
    return new Promise((resolve, reject) => {
      const run = async () => {
        try {
          resolve(await fn());
        } catch (e) {
          reject(e);
        }
      };
      // After close the stream has ended: its point is the end of what was applied.
      if (this.closed) this.afterClose = this.afterClose.then(run);
      else this.enqueue({ bytes: 0, run });
    });
  }

  /**
   * Like barrier(), but at the next FLUSH or POINT marker of the agent (a point it vouches for,
   * SPEC.md 7.4), if one is applied within `waitMs`; else at the current point.
   */
  barrierAtFlush<T>(fn: () => Promise<T> | T, waitMs: number): Promise<T> {
    if (this.closed) return this.barrier(fn); // no marker will come
    return new Promise((resolve, reject) => {
      let done = false;
      const hook = async () => {
        if (done) return;
        done = true;
        clearTimeout(timer);
        try {
          resolve(await fn());
        } catch (e) {
          reject(e);
        }
      };
      const timer = setTimeout(() => {
        if (done) return;
        this.flushHooks = this.flushHooks.filter((h) => h !== hook);
        this.barrier(fn).then(resolve, reject);
        done = true;
      }, waitMs);
      this.flushHooks.push(hook);
    });
  }

  /**
   * The transport ended in order (FIN, or after the last whole frame): apply every frame
   * received, as they are whole and in stream order, then close(). An AGENT_SHUTDOWN among them
   * counts (SPEC.md 5.7). Bounded: at most maxBytes and what arrived past the pause.
   */
  async finish(): Promise<void> {
    this.finishing = true;
    while (!this.closed && !this.broken && this.head < this.items.length) {
      if (!this.draining) this.current = this.drain();
      await this.current;
    }
    return this.close();
  }

  /**
   * The session ends: stop applying. Barriers still waiting run at the end of what was applied
   * (the stream stopped there). Returns what is being applied now, for its owner to wait on.
   */
  close(): Promise<void> {
    if (this.closed) return this.current;
    this.closed = true;
    const pendingRuns = this.items.slice(this.head).filter((it) => it.run);
    const hooks = this.flushHooks.splice(0);
    this.afterClose = this.current.then(async () => {
      for (const it of pendingRuns) await it.run!();
      for (const h of hooks) await h();
    });
    return this.current;
  }

  private enqueue(it: Item): void {
    this.items.push(it);
    this.bytes += it.bytes;
    if (!this.paused && this.bytes > this.maxBytes) {
      this.paused = true;
      this.handler.pause(true);
    }
    if (!this.draining) this.current = this.drain();
  }

  private async drain(): Promise<void> {
    this.draining = true;
    try {
      while (this.head < this.items.length && !this.closed && !this.broken) {
        const it = this.items[this.head++];
        if (it.run) await it.run();
        else {
          await this.handler.apply(it.msg);
          this.handler.applied(it.payload); // applied: nothing refers to its bytes any more
          if (it.msg.cmd === Cmd.FLUSH || it.msg.cmd === Cmd.POINT)
            for (const h of this.flushHooks.splice(0)) await h();
        }
        this.bytes -= it.bytes;
        assert(this.bytes >= 0 && this.head <= this.items.length, 'the apply queue is consumed in order');
        if (this.paused && this.bytes <= this.maxBytes / 2) {
          this.paused = false;
          this.handler.pause(false);
        }
        if (this.head > COMPACT_AT) {
          this.items = this.items.slice(this.head);
          this.head = 0;
        }
      }
    } catch (e) {
      this.broken = true;
      this.handler.failed(e as Error);
    } finally {
      this.draining = false;
    }
    if (!this.closed && !this.finishing) this.handler.idle();
  }
}
