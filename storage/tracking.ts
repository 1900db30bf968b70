// Change tracking as a block filter (nbdkit's filters/log shape): a TrackedTarget tells a
// change map of every range before passing the write down to the layer under it. Stacked, one
// filter per map: the hub's known-zero map under the replica's guard, failover's
// recovery-changed map under the promoted export. Reads and the optional fast paths pass through.
import type { BlockTarget } from './volume';
import { DirtyBitmap } from './bitmap';

/** A map told of changed byte ranges (DirtyLog fits as it is). */
export interface ChangeMap {
  mark(start: number, end: number): void;
  /** Made durable after the data under it was flushed. */
  sync?(durable: boolean): void;
}

/** Marks `changes` before each write reaches `next`; everything else is `next`'s. */
export class TrackedTarget implements BlockTarget {
  readonly writeSync?: (buf: Buffer, offset: number) => void;
  readonly writev?: (parts: Buffer[], offset: number) => Promise<void>;
  readonly readBulk?: (buf: Buffer, offset: number) => Promise<void>;
  readonly dataExtents?: (start: number, end: number) => [number, number][] | null;
  readonly dropCache?: () => void;
  readonly landing?: (start: number, end: number) => Promise<void> | null;
  readonly writesFailed?: () => boolean;
  readonly readThen?: (buf: Buffer, offset: number, then: (e: Error | null) => void) => void;

  constructor(
    readonly next: BlockTarget,
    readonly changes: ChangeMap,
  ) {
    // The optional paths exist exactly when the layer below has them, so callers' checks hold.
    if (next.writeSync) this.writeSync = (buf, offset) => this.syncWrite(buf, offset);
    if (next.writev) this.writev = (parts, offset) => this.gatheredWrite(parts, offset);
    if (next.readBulk) this.readBulk = (buf, offset) => next.readBulk!(buf, offset);
    if (next.dataExtents) this.dataExtents = (start, end) => next.dataExtents!(start, end);
    if (next.dropCache) this.dropCache = () => next.dropCache!();
    if (next.landing) this.landing = (start, end) => next.landing!(start, end);
    if (next.writesFailed) this.writesFailed = () => next.writesFailed!();
    if (next.readThen) this.readThen = (buf, offset, then) => next.readThen!(buf, offset, then);
  }

  get sizeBytes(): number {
    return this.next.sizeBytes;
  }

  /** Bytes the bottom file wrote around the page cache (status), whatever sits between. */
  get directBytes(): number | undefined {
    return (this.next as { directBytes?: number }).directBytes;
  }

  read(buf: Buffer, offset: number): Promise<void> {
    return this.next.read(buf, offset);
  }

  write(buf: Buffer, offset: number): Promise<void> {
    if (buf.length > 0) this.changes.mark(offset, offset + buf.length);
    return this.next.write(buf, offset);
  }

  private syncWrite(buf: Buffer, offset: number): void {
    if (buf.length > 0) this.changes.mark(offset, offset + buf.length);
    this.next.writeSync!(buf, offset);
  }

  private gatheredWrite(parts: Buffer[], offset: number): Promise<void> {
    let length = 0;
    for (const p of parts) length += p.length;
    if (length > 0) this.changes.mark(offset, offset + length);
    return this.next.writev!(parts, offset);
  }

  /** Data first, then the map that says where it changed. */
  async flush(): Promise<void> {
    await this.next.flush();
    this.changes.sync?.(true);
  }

  close(): Promise<void> {
    return this.next.close();
  }
}

/**
 * Regions known to hold zeroes: all of them when the hub created the recovery volume sparse;
 * a region stops being known zero once anything writes it. Kept in memory only (lost on
 * restart, then zeroes are written, which is merely slower).
 */
export class KnownZeroMap implements ChangeMap {
  private readonly regions: DirtyBitmap;

  constructor(sizeBytes: number, regionSize: number) {
    this.regions = new DirtyBitmap(sizeBytes, regionSize);
    this.regions.setAll();
  }

  /** Written: [start, end) is no longer known zero. */
  mark(start: number, end: number): void {
    if (end <= start) return;
    const map = this.regions;
    map.clearRegions(map.regionOf(start), map.regionOf(end - 1));
  }

  /** Regions [first, last] were found to hold something else (verify): no longer known zero. */
  forget(first: number, last: number): void {
    this.regions.clearRegions(first, last);
  }

  /** True when every region [start, end) touches is known zero. */
  covers(start: number, end: number): boolean {
    const map = this.regions,
      first = map.regionOf(start),
      last = map.regionOf(end - 1);
    return map.countRange(first, last + 1) === last - first + 1;
  }
}
