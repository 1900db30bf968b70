// Reusable buffers for the data path. A fresh 1 MiB allocation per frame costs page faults and
// page clearing in the kernel (above glibc's mmap threshold) and GC work in V8, more than the
// copy into it. take() hands out a view of a pooled buffer; give() returns it once nothing
// uses it any more. Buffers never given back are simply collected: the pool tracks lending in
// a WeakSet and bounds only what it keeps idle.
export class BufferPool {
  private free: Buffer[] = [];
  private readonly lent = new WeakSet<object>();
  stats = { taken: 0, reused: 0, given: 0 };

  constructor(readonly bufferBytes: number, readonly maxIdle: number) {
    if (!(bufferBytes > 0 && maxIdle >= 0)) throw new RangeError(`bad pool ${bufferBytes} x ${maxIdle}`);
  }

  /** A buffer of n bytes; pooled when n fits a pool buffer. Contents are not cleared. */
  take(n: number): Buffer {
    if (n > this.bufferBytes) return Buffer.allocUnsafeSlow(n);
    this.stats.taken++;
    let b = this.free.pop();
    if (b) this.stats.reused++;
    else b = Buffer.allocUnsafeSlow(this.bufferBytes);
    this.lent.add(b.buffer);
    return b.subarray(0, n);
  }

  /** Return a buffer (or any view of it) from take(); anything else is ignored, as is a second give. */
  give(view: Buffer): void {
    const ab = view.buffer;
    if (!this.lent.delete(ab)) return;
    this.stats.given++;
    if (this.free.length < this.maxIdle) this.free.push(Buffer.from(ab, 0, this.bufferBytes));
  }

  get idle(): number {
    return this.free.length;
  }
}
