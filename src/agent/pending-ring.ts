// The mirrored writes awaiting the hub's durable ack, oldest first: a ring of typed arrays sized
// once to the pending limit (maxPendingWrites, 64 Ki by default: 1.9 MiB). It replaced an array
// of one object per write that was compacted by copying every 4,096 acks: now the memory is
// fixed at start, a write is six stores and an ack a head move. (Measured: scavenges per write
// and throughput unchanged within noise; the point is the bound.) Owned by the Mirror.
import { assert } from '../assert';

const MAX_CAPACITY = 1 << 22; // 4 Mi writes, 120 MiB of ring: far past any sane pending limit

export class PendingRing {
  // The fields, by slot (slot()); only push() writes them.
  readonly seqs: Float64Array; // seq numbers exceed 2^32 on a long connection
  readonly offsets: Float64Array; // bytes into the volume: past 4 GiB
  readonly lens: Uint32Array; // a write is at most the NBD limit (32 MiB)
  readonly firsts: Uint32Array; // regions the write touches
  readonly lasts: Uint32Array;
  readonly volumes: Uint16Array; // the volume's index (VolumeTable.list)
  private head = 0; // slot of the oldest entry
  private count = 0;

  constructor(readonly capacity: number) {
    assert(Number.isInteger(capacity) && capacity > 0 && capacity <= MAX_CAPACITY, `pending ring of ${capacity}`);
    this.seqs = new Float64Array(capacity);
    this.offsets = new Float64Array(capacity);
    this.lens = new Uint32Array(capacity);
    this.firsts = new Uint32Array(capacity);
    this.lasts = new Uint32Array(capacity);
    this.volumes = new Uint16Array(capacity);
  }

  get size(): number {
    return this.count;
  }

  /** Append the newest write; the caller keeps size under capacity (its pending limit). */
  push(seq: number, volume: number, first: number, last: number, offset: number, len: number): void {
    assert(this.count < this.capacity, 'pending writes within the ring');
    assert(volume >= 0 && volume <= 0xffff && len >= 0 && len <= 0xffffffff, 'a pending write fits its slot');
    assert(first >= 0 && last >= first && last <= 0xffffffff, 'a pending write names its regions');
    let i = this.head + this.count++;
    if (i >= this.capacity) i -= this.capacity;
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
    if (++this.head === this.capacity) this.head = 0;
  }

  clear(): void {
    this.head = 0;
    this.count = 0;
  }

  /** The slot of the k-th entry from the oldest (0 <= k < size), to read its fields at. */
  slot(k: number): number {
    assert(k >= 0 && k < this.count, 'a pending entry within the ring');
    const i = this.head + k;
    return i >= this.capacity ? i - this.capacity : i;
  }
}
