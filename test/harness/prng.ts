// The one seeded PRNG of the tests and tools (mulberry32), so a fuzz run, a fault campaign or a
// property test replays from its seed. `Rng` adds the helpers the fuzzer needs (ints, picks,
// weights, bytes, independent forks); `mulberry32(seed)` is the bare float stream.

/** Mulberry32 over a 32-bit state; a seed above 2^32 folds its high bits in. */
export class Rng {
  private state: number;

  constructor(seed: number) {
    // For seeds below 2^32 this is exactly the classic mulberry32 seeding (seed >>> 0).
    this.state = ((seed >>> 0) ^ Math.floor(seed / 2 ** 32)) >>> 0;
  }

  u32(): number {
    this.state = (this.state + 0x6d2b79f5) >>> 0;
    let t = this.state;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return (t ^ (t >>> 14)) >>> 0;
  }

  /** A float in [0, 1). */
  float(): number {
    return this.u32() / 4294967296;
  }

  /** Integer in [0, n), n up to 2^53. */
  int(n: number): number {
    if (n <= 4294967296) return Math.floor(this.float() * n);
    return Math.floor(((this.u32() * 4294967296 + this.u32()) / 18446744073709551616) * n);
  }

  between(lo: number, hi: number): number {
    return lo + this.int(hi - lo + 1);
  }
  chance(p: number): boolean {
    return this.float() < p;
  }
  pick<T>(a: readonly T[]): T {
    return a[this.int(a.length)];
  }

  weighted<K extends string>(w: Partial<Record<K, number>>): K {
    const e = Object.entries(w) as [K, number][];
    let t = 0;
    for (const [, v] of e) t += Math.max(0, v);
    let x = this.float() * t;
    for (const [k, v] of e) {
      if ((x -= Math.max(0, v)) < 0) return k;
    }
    return e[e.length - 1][0];
  }

  bytes(n: number): Buffer {
    const b = Buffer.allocUnsafe(n);
    let i = 0;
    for (; i + 4 <= n; i += 4) b.writeUInt32LE(this.u32(), i);
    for (; i < n; i++) b[i] = this.u32() & 0xff;
    return b;
  }

  /** An independent stream for a worker: its sequence does not depend on how much the parent draws later. */
  fork(tag: number): Rng {
    return new Rng((this.u32() ^ Math.imul(tag + 1, 0x9e3779b1)) >>> 0);
  }
}

/** The bare stream of floats in [0, 1) (same sequence as the classic mulberry32 for the seed). */
export function mulberry32(seed: number): () => number {
  const r = new Rng(seed);
  return () => r.float();
}
