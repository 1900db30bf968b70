// The window of writes in flight to a remote image (RBD) or through O_DIRECT to a file
// (FileVolume with --cache none): write() hands a write over and returns while it travels, as a
// page cache would, so the one-at-a-time apply queue keeps several writes in flight instead of
// one device or cluster round trip each. Owns the in-flight extents, their limits and
// the first failure. Guarantees: a write overlapping one in flight waits for it (stream order per
// byte); a read waits for the writes it overlaps (it sees them); drain() returns once everything
// handed over has landed, and throws the first failure since the last drain, naming its offset,
// so a flush never reports durable what did not land. A read is in the window too, from the
// moment it is asked for: a write asked for after it waits until it has read (it sees the old
// bytes: the encryption alarm's sample read, the journal's before-image read). A write given a
// copy of its own (`keep`) is chained behind what it overlaps instead of waiting for it.
import { assert } from './assert';

interface InFlight {
  start: number;
  end: number;
  bytes: number; // held by the window: a write's length, 0 for a read
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

  /** A write failed since the last drain (which will throw it). */
  get failed(): boolean {
    return this.failure !== null;
  }

  /**
   * Start `submit` for [start, start+len) once it overlaps nothing in flight and there is room;
   * resolves when it is on its way (not landed). `submit` resolves when it landed, rejects on failure.
   * With `keep` (a submit that no longer refers to the caller's memory: its own copy), a write
   * that overlaps some in flight does not wait for them: it joins the window now and is submitted
   * once they have landed (a sampled read, the previous write to the same bytes), so the caller
   * (the apply queue) waits for room only, never for a round trip.
   */
  async add(start: number, len: number, submit: () => Promise<void>, keep?: () => () => Promise<void>): Promise<void> {
    const end = start + len;
    let after: Promise<void>[] | null = null;
    for (;;) {
      const blocker = this.inflight.find((w) => w.start < end && start < w.end);
      if (this.inflight.length >= this.maxWrites || (this.bytes > 0 && this.bytes + len > this.maxBytes))
        await this.inflight[0].done;
      else if (blocker && !keep) await blocker.done;
      else {
        if (blocker) after = this.inflight.filter((w) => w.start < end && start < w.end).map((w) => w.done);
        break;
      }
    }
    const w: InFlight = { start, end, bytes: len, done: Promise.resolve() };
    const go = after ? Promise.all(after).then(keep!()) : submit();
    w.done = go.then(
      () => this.landed(w),
      (e: Error) => {
        this.failure ??= e;
        this.landed(w);
      },
    );
    this.inflight.push(w);
    this.bytes += len;
  }

  /**
   * add(), but resolves once the write landed and rejects with its failure: for a caller that
   * cannot leave its buffer with the window (the failure is the caller's, not the next drain's).
   */
  async addLanded(start: number, len: number, submit: () => Promise<void>): Promise<void> {
    let landed: Promise<void> = Promise.resolve();
    await this.add(start, len, () => {
      landed = submit();
      return landed.catch(() => undefined);
    });
    return landed;
  }

  /**
   * The landing of everything in flight (writes and reads) over [start, end), or null when
   * nothing is: a synchronous writer or reader of the range goes only on null.
   */
  over(start: number, end: number): Promise<void> | null {
    if (this.inflight.length === 0) return null;
    let ws: Promise<void>[] | null = null;
    for (const w of this.inflight) if (w.start < end && start < w.end) (ws ??= []).push(w.done);
    return ws ? Promise.all(ws).then(() => undefined) : null;
  }

  /**
   * Read [start, end) with `submit` once the writes in flight before it that overlap it have
   * landed; writes asked for after this call that overlap it wait for the read.
   */
  read(start: number, end: number, submit: () => Promise<void>): Promise<void> {
    const before = this.inflight.filter((w) => w.bytes > 0 && w.start < end && start < w.end);
    const got = before.length ? Promise.all(before.map((w) => w.done)).then(submit) : submit();
    const r: InFlight = { start, end, bytes: 0, done: Promise.resolve() };
    r.done = got.then(
      () => this.landed(r),
      () => this.landed(r), // the reader hears of its failure; the window only lets go
    );
    this.inflight.push(r);
    return got;
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
    this.bytes -= w.bytes;
    assert(this.bytes >= 0, 'the window counts what it holds');
  }
}
