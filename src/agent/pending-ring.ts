// The mirrored writes awaiting the hub's durable ack, oldest first: a ring of typed arrays, 30
// bytes a write, that doubles as it fills up to the pending limit (maxPendingWrites) and never
// shrinks: memory follows the longest ack lag seen, bounded by the limit. It replaced an array
// of one object per write, compacted by copying every 4,096 acks: a write is six stores and an
// ack a head move. Owned by the Mirror.
import { assert } from '../assert';

const MAX_CAPACITY = 1 << 22; // 4 Mi writes, 120 MiB of ring: far past any sane pending limit
const FIRST_SLOTS = 4096; // 120 KiB

export class PendingRing {
  // The fields, by slot (slot()); only push() writes them, resize() replaces them.
  seqs!: Float64Array; // seq numbers exceed 2^32 on a long connection
  offsets!: Float64Array; // bytes into the volume: past 4 GiB
  lens!: Uint32Array; // a write is at most the NBD limit (32 MiB)
  firsts!: Uint32Array; // regions the write touches
  lasts!: Uint32Array;
  volumes!: Uint16Array; // the volume's index (VolumeTable.list)
  private slots = 0; // allocated: <= capacity
  private head = 0; // slot of the oldest entry
  private count = 0;

  constructor(
    readonly capacity: number,
    firstSlots = FIRST_SLOTS,
  ) {
    assert(Number.isInteger(capacity) && capacity > 0 && capacity <= MAX_CAPACITY, `pending ring of ${capacity}`);
    assert(Number.isInteger(firstSlots) && firstSlots > 0, 'a ring starts with a slot');
    this.resize(Math.min(capacity, firstSlots));
  }

  get size(): number {
    return this.count;
  }

  /** Append the newest write; the caller keeps size under capacity (its pending limit). */
  push(seq: number, volume: number, first: number, last: number, offset: number, len: number): void {
    assert(this.count < this.capacity, 'pending writes within the ring');
    if (this.count === this.slots) this.resize(Math.min(this.slots * 2, this.capacity));
    assert(volume >= 0 && volume <= 0xffff && len >= 0 && len <= 0xffffffff, 'a pending write fits its slot');
    assert(first >= 0 && last >= first && last <= 0xffffffff, 'a pending write names its regions');
    let i = this.head + this.count++;
    if (i >= this.slots) i -= this.slots;
    this.seqs[i] = seq;
    this.volumes[i] = volume;
    this.firsts[i] = first;
    this.lasts[i] = last;
    this.offsets[i] = offset;
    this.lens[i] = len;
  }

  /** Drop the oldest entry (it was acked). */
  shift(): void {
    assert(this.count > 0, 'shift of an empty pending ring');
    this.count--;
    if (++this.head === this.slots) this.head = 0;
  }

  clear(): void {
    this.head = 0;
    this.count = 0;
  }

  /** The slot of the k-th entry from the oldest (0 <= k < size), to read its fields at. */
  slot(k: number): number {
    assert(k >= 0 && k < this.count, 'a pending entry within the ring');
    const i = this.head + k;
    return i >= this.slots ? i - this.slots : i;
  }

  /** New arrays of `n` slots, the entries copied in order from slot 0 (rare: log2 of the limit). */
  private resize(n: number): void {
    const old = this.slots > 0 ? [this.seqs, this.offsets, this.lens, this.firsts, this.lasts, this.volumes] : null;
    this.seqs = new Float64Array(n);
    this.offsets = new Float64Array(n);
    this.lens = new Uint32Array(n);
    this.firsts = new Uint32Array(n);
    this.lasts = new Uint32Array(n);
    this.volumes = new Uint16Array(n);
    if (old !== null) {
      const fresh = [this.seqs, this.offsets, this.lens, this.firsts, this.lasts, this.volumes];
      const tail = Math.min(this.count, this.slots - this.head); // entries before the wrap
      for (let f = 0; f < fresh.length; f++) {
        const a = old[f] as Float64Array, // the same calls on each typed array
          b = fresh[f] as Float64Array;
        b.set(a.subarray(this.head, this.head + tail), 0);
        b.set(a.subarray(0, this.count - tail), tail);
      }
    }
    this.slots = n;
    this.head = 0;
  }

  /** Slots allocated now (tests). */
  get allocated(): number {
    return this.slots;
  }
}
