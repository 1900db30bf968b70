// Byte-range locks of one protected volume: a write waits for every overlapping write in
// progress, so the order writes land on the image is the order they are mirrored in.
import { assert } from '../assert';

interface Held {
  start: number;
  end: number;
  done: Promise<void>;
}

export class RangeLocks {
  private readonly held: Held[] = [];

  /** A write in progress overlaps [start, end): a new one must wait for it (lock()). */
  locked(start: number, end: number): boolean {
    for (const l of this.held) if (l.start < end && start < l.end) return true;
    return false;
  }

  /** Wait until [start, end) is free, then hold it; call the returned function to release. */
  async lock(start: number, end: number): Promise<() => void> {
    for (;;) {
      const c = this.held.find((l) => l.start < end && start < l.end);
      if (!c) break;
      await c.done;
    }
    let release!: () => void;
    const l: Held = { start, end, done: new Promise<void>((r) => (release = r)) };
    this.held.push(l);
    return () => {
      const i = this.held.indexOf(l);
      assert(i >= 0, 'a range lock is released once');
      this.held.splice(i, 1);
      release();
    };
  }
}
