// The window of writes in flight to a remote image (RBD): write() hands a write to the cluster and
// returns while it travels, as a page cache would, so the one-at-a-time apply queue keeps several
// writes on the wire instead of one round trip each. Owns the in-flight extents, their limits and
// the first failure. Guarantees: a write overlapping one in flight waits for it (stream order per
// byte); a read waits for the writes it overlaps (it sees them); drain() returns once everything
// handed over has landed, and throws the first failure since the last drain, naming its offset,
// so a flush never reports durable what did not land.
import { assert } from './assert';

interface InFlight {
  start: number;
  end: number;
  done: Promise<void>;
}

export const WINDOW_WRITES = 32; // writes in flight per image
export const WINDOW_BYTES = 32 << 20; // bytes in flight per image (copies held until they land)

export class WriteWindow {
  private inflight: InFlight[] = [];
  private bytes = 0;
  private failure: Error | null = null;

  constructor(
    private readonly maxWrites = WINDOW_WRITES,
    private readonly maxBytes = WINDOW_BYTES,
  ) {
    assert(maxWrites > 0 && maxBytes > 0, 'the write window has room');
  }

  get writes(): number {
    return this.inflight.length;
  }

  /**
   * Start `submit` for [start, start+len) once it overlaps nothing in flight and there is room;
   * resolves when it is on its way (not landed). `submit` resolves when it landed, rejects on failure.
   */
  async add(start: number, len: number, submit: () => Promise<void>): Promise<void> {
    const end = start + len;
    for (;;) {
      const blocker = this.inflight.find((w) => w.start < end && start < w.end);
      if (blocker) await blocker.done;
      else if (this.inflight.length >= this.maxWrites || (this.bytes > 0 && this.bytes + len > this.maxBytes))
        await this.inflight[0].done;
      else break;
    }
    const w: InFlight = { start, end, done: Promise.resolve() };
    w.done = submit().then(
      () => this.landed(w),
      (e: Error) => {
        this.failure ??= e;
        this.landed(w);
      },
    );
    this.inflight.push(w);
    this.bytes += len;
  }

  /** Wait for the writes in flight that overlap [start, end). */
  async settled(start: number, end: number): Promise<void> {
    for (;;) {
      const w = this.inflight.find((x) => x.start < end && start < x.end);
      if (!w) return;
      await w.done;
    }
  }

  /**
   * Wait for everything handed over so far (not for writes added meanwhile: under steady load
   * the window never empties); throw the first failure since the last drain.
   */
  async drain(): Promise<void> {
    await Promise.all(this.inflight.map((w) => w.done));
    const f = this.failure;
    this.failure = null;
    if (f) throw f;
  }

  private landed(w: InFlight): void {
    const i = this.inflight.indexOf(w);
    assert(i >= 0, 'a write lands once');
    this.inflight.splice(i, 1);
    this.bytes -= w.end - w.start;
    assert(this.bytes >= 0, 'the window counts what it holds');
  }
}
