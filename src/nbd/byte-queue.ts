// A queue of received chunks that hands out exact-length slices: zero-copy when a slice lies
// in one chunk, one copy when it spans chunks.
export class ByteQueue {
  private chunks: Buffer[] = [];
  private head = 0; // offset into chunks[0]
  length = 0;
  /** A view of a chunk was handed out (take, takeParts) since the owner last cleared this. */
  lent = false;

  push(b: Buffer): void {
    if (b.length === 0) return;
    this.chunks.push(b);
    this.length += b.length;
  }

  /** Remove the next n bytes (n <= length) as views of the chunks they arrived in: no copy. */
  takeParts(n: number): Buffer[] {
    if (n > this.length) throw new RangeError(`take ${n} of ${this.length}`);
    this.length -= n;
    this.lent = true;
    const out: Buffer[] = [];
    while (n > 0) {
      const c = this.chunks[0];
      const k = Math.min(n, c.length - this.head);
      out.push(c.subarray(this.head, this.head + k));
      n -= k;
      this.head += k;
      if (this.head === c.length) {
        this.chunks.shift();
        this.head = 0;
      }
    }
    return out;
  }

  /** Remove the next n bytes (n <= length) by copying them into dest at `at`. */
  takeInto(dest: Buffer, at: number, n: number): void {
    if (n > this.length || at + n > dest.length)
      throw new RangeError(`take ${n} of ${this.length} into ${dest.length - at}`);
    this.length -= n;
    while (n > 0) {
      const c = this.chunks[0];
      const k = Math.min(n, c.length - this.head);
      c.copy(dest, at, this.head, this.head + k);
      at += k;
      n -= k;
      this.head += k;
      if (this.head === c.length) {
        this.chunks.shift();
        this.head = 0;
      }
    }
  }

  /**
   * The chunk holding the next n bytes in one piece (they start at `headOffset`), or null when
   * they span chunks or are not all here: a header read in place, without a view (skip() after).
   */
  contiguous(n: number): Buffer | null {
    const c = this.chunks[0];
    return c !== undefined && c.length - this.head >= n ? c : null;
  }

  get headOffset(): number {
    return this.head;
  }

  /** Drop the next n bytes, which contiguous(n) returned in one chunk. */
  skip(n: number): void {
    const c = this.chunks[0];
    if (c === undefined || c.length - this.head < n) throw new RangeError(`skip ${n} of one chunk`);
    this.length -= n;
    this.head += n;
    if (this.head === c.length) {
      this.chunks.shift();
      this.head = 0;
    }
  }

  /** Remove and return the next n bytes (n <= length). */
  take(n: number): Buffer {
    if (n > this.length) throw new RangeError(`take ${n} of ${this.length}`);
    this.length -= n;
    const first = this.chunks[0];
    if (first && first.length - this.head >= n) {
      const out = first.subarray(this.head, this.head + n);
      this.lent = true;
      this.head += n;
      if (this.head === first.length) {
        this.chunks.shift();
        this.head = 0;
      }
      return out;
    }
    const out = Buffer.allocUnsafe(n);
    let filled = 0;
    while (filled < n) {
      const c = this.chunks[0];
      const k = Math.min(n - filled, c.length - this.head);
      c.copy(out, filled, this.head, this.head + k);
      filled += k;
      this.head += k;
      if (this.head === c.length) {
        this.chunks.shift();
        this.head = 0;
      }
    }
    return out;
  }
}
