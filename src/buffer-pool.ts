// Reusable buffers for the data path. A fresh 1 MiB allocation per frame costs page faults and
// page clearing in the kernel (above glibc's mmap threshold) and GC work in V8, more than the
// copy into it. take() hands out a view of a pooled buffer with one hold on it; hold() adds
// one for a second user (a socket write still sending it, say); give() drops one, and the
// last returns the buffer. Buffers never given back are simply collected: the pool tracks
// lending in a WeakMap and bounds only what it keeps idle.
export class BufferPool {
  private free: Buffer[] = [];
  private readonly lent = new WeakMap<object, number>(); // ArrayBuffer -> holds
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
    this.lent.set(b.buffer, 1);
    return b.subarray(0, n);
  }

  /** One more hold on a lent buffer (any view of it); false when it is not the pool's. */
  hold(view: Buffer): boolean {
    const n = this.lent.get(view.buffer);
    if (n === undefined) return false;
    this.lent.set(view.buffer, n + 1);
    return true;
  }

  /** Drop a hold on a buffer (any view of it) from take(); anything else is ignored, as is a give after the last. */
  give(view: Buffer): void {
    const ab = view.buffer;
    const n = this.lent.get(ab);
    if (n === undefined) return;
    if (n > 1) { this.lent.set(ab, n - 1); return; }
    this.lent.delete(ab);
    this.stats.given++;
    if (this.free.length < this.maxIdle) this.free.push(Buffer.from(ab, 0, this.bufferBytes));
  }

  get idle(): number {
    return this.free.length;
  }
}
