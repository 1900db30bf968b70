// The hub's remote IO on the protected volumes: reads for sync and resync (holes found with
// SEEK_DATA are not read; zero data is answered as IO_ZEROES or left out of an IO_SPARSE
// answer), writes for failback (ordered with guest writes, durable before answered), and region
// checksums. Owns the bounded queue of requests and how many run at once. Each answer goes out
// on the link its request came in on.
import { createHash } from 'node:crypto';
import {
  Cap,
  SECTOR,
  IO_OK,
  IO_ZEROES,
  IO_SPARSE,
  SPARSE_CHUNK,
  SPARSE_MAP_BYTES,
  CHECKSUM_BYTES,
  chunkCount,
  encodeSparseMap,
  encodeRemoteIoResHead,
  encodeChecksumRes,
  ProtocolError,
  RemoteIoReq,
  ChecksumReq,
} from '../../protocol';
import { BufferPool } from '../buffer-pool';
import { DirtyBitmap } from '../../storage/bitmap';
import { BlockTarget, DIRECT_ALIGN, ZEROES } from '../../storage/volume';
import { assert } from '../assert';
import type { Logger } from '../log';
import type { AgentVolume, VolumeTable } from './volume';
import type { AgentStats, LinkPort } from './ports';

const MAX_QUEUED = 1024; // requests waiting beyond maxRemoteIo; more is a misbehaving hub
const HOLE_SCAN_MS = 20; // the most a report's hole scan holds the event loop (holesIn)
const HOLE_SCAN_WINDOW = 1 << 30; // bytes per SEEK_DATA walk between two looks at the clock
const EINVAL = -22;
const EIO = -5;

export interface RemoteIoOptions {
  maxRemoteIo: number; // remote IOs executed at once
  seekData: boolean; // find holes with SEEK_DATA/SEEK_HOLE
}

/** Told of each read answered (once it has left): the backlog bound's read-back (handover.ts). */
export interface ReadBackSink {
  readBack(v: AgentVolume, start: number, end: number): void;
}

/** The guest writes' range locks (write-path.ts): failback writes take them too. */
export interface RangeHolder {
  lockRange(v: AgentVolume, start: number, end: number): Promise<() => void>;
}

interface Queued {
  link: LinkPort;
  req: RemoteIoReq;
}

function isZero(b: Buffer): boolean {
  for (let o = 0; o < b.length; o += ZEROES.length) {
    const n = Math.min(ZEROES.length, b.length - o);
    if (b.compare(ZEROES, 0, n, o, o + n) !== 0) return false; // native memcmp
  }
  return true;
}

/** The hub's reads are replication traffic: bulk reads where the target has them. */
function readBulk(t: BlockTarget, buf: Buffer, offset: number): Promise<void> {
  return t.readBulk ? t.readBulk(buf, offset) : t.read(buf, offset);
}

/**
 * A read or checksum answer, as resync traffic. Under a pacer it resolves once the answer has
 * left the pacer, so a remote IO's slot (maxRemoteIo) is held until then: the pacer never
 * holds more than maxRemoteIo answers. Without one, it is sent at once, as before.
 */
function answer(link: LinkPort, bufs: Buffer[], done?: () => void): Promise<void> | void {
  if (!link.sendBulk) return link.send(bufs, done);
  return new Promise((resolve) =>
    link.sendBulk!(bufs, () => {
      done?.();
      resolve();
    }),
  );
}

export class RemoteIo {
  private active = 0;
  private queue: Queued[] = [];
  // Buffers for the hub's reads (at most maxRemoteIo in use): reused, not reallocated per read.
  private readonly readPool = new BufferPool(1 << 20, 16, DIRECT_ALIGN); // aligned: cold reads go direct

  constructor(
    private readonly volumes: VolumeTable,
    private readonly opts: RemoteIoOptions,
    private readonly log: Logger,
    private readonly stats: AgentStats,
    private readonly ranges: RangeHolder,
    private readonly readBacks?: ReadBackSink,
  ) {}

  /**
   * The regions of `regions` that lie wholly in holes of v's image now (SEEK_HOLE), for a report's
   * DIRTY_ZERO frames (cap HOLES); null when holes cannot be found (no SEEK_DATA, or turned off).
   * Synchronous: the report leaves in the same turn, before any later write's frame. The scan
   * holds the event loop (the guest's IO), so it stops after HOLE_SCAN_MS; the holes not found
   * by then are reported as plain dirty regions, which is only slower.
   */
  holesIn(v: AgentVolume, regions: DirtyBitmap, now = () => performance.now()): DirtyBitmap | null {
    const t = v.target;
    if (!this.opts.seekData || !t.dataExtents) return null;
    const rs = regions.regionSize,
      holes = new DirtyBitmap(regions.sizeBytes, rs),
      until = now() + HOLE_SCAN_MS;
    for (const [a, b] of regions.runs()) {
      for (let start = a * rs, end = Math.min(b * rs, regions.sizeBytes); start < end; start += HOLE_SCAN_WINDOW) {
        if (now() > until) return holes;
        const stopAt = Math.min(end, start + HOLE_SCAN_WINDOW);
        const data = t.dataExtents(start, stopAt);
        if (data === null) return holes;
        let at = start;
        for (const [ds, de] of [...data, [stopAt, stopAt]]) {
          const first = Math.ceil(at / rs),
            stop = ds >= regions.sizeBytes ? regions.regions : Math.floor(ds / rs); // whole regions of [at, ds)
          if (first < stop) holes.setRegions(first, stop - 1);
          at = Math.max(at, de);
        }
      }
    }
    return holes;
  }

  /** The connection closed: requests not started are dropped (those running answer into the void). */
  detach(): void {
    this.queue = [];
  }

  /** REMOTE_IO_REQ: run it now, or queue it behind the maxRemoteIo running. */
  request(link: LinkPort, req: RemoteIoReq): void {
    if (this.active >= this.opts.maxRemoteIo) {
      if (this.queue.length >= MAX_QUEUED) throw new ProtocolError('hub exceeded the remote IO queue limit');
      this.queue.push({ link, req });
      return;
    }
    this.active++;
    assert(this.active <= this.opts.maxRemoteIo, 'remote IOs running within their limit');
    void this.run(link, req).finally(() => {
      this.active--;
      const next = this.queue.shift();
      if (next) this.request(next.link, next.req);
    });
  }

  private async run(link: LinkPort, m: RemoteIoReq): Promise<void> {
    const v = this.volumes.withHubId(m.volumeId);
    const offset = m.offsetSectors * SECTOR,
      len = m.sizeSectors * SECTOR;
    if (!v || offset + len > v.sizeBytes) {
      this.log.error({ volumeId: m.volumeId, offset, len }, 'remote IO for unknown volume or out of range');
      link.send([encodeRemoteIoResHead(m.reqId, EINVAL, m.volumeId, 0)]);
      return;
    }
    try {
      if (m.isRead) {
        await this.read(link, v, m, offset, len);
        this.readBacks?.readBack(v, offset, offset + len);
      } else await this.write(link, v, m, offset, len);
    } catch (e) {
      this.log.error({ volume: v.name, offset, len, cause: (e as Error).message }, 'remote IO failed');
      link.send([encodeRemoteIoResHead(m.reqId, EIO, m.volumeId, 0)]);
    }
  }

  /**
   * A failback write. Under the guest writes' range lock: a guest write to the range lands
   * before it and is mirrored before its answer, or lands after it and is mirrored after (the
   * hub relies on that order to keep the newer write). Durable before the answer, because the
   * hub forgets what it wrote back once answered.
   */
  private async write(link: LinkPort, v: AgentVolume, m: RemoteIoReq, offset: number, len: number): Promise<void> {
    const unlock = await this.ranges.lockRange(v, offset, offset + len);
    try {
      await v.target.write(m.data, offset);
      await v.target.flush();
      this.stats.remoteWrites++;
      link.send([encodeRemoteIoResHead(m.reqId, IO_OK, m.volumeId, 0)]);
    } finally {
      unlock();
    }
  }

  /**
   * Answer a hub read: holes (SEEK_DATA) are not read at all, and with SPARSE only the chunks
   * holding non-zero data cross the link; an all-zero range is one IO_ZEROES header.
   */
  private async read(link: LinkPort, v: AgentVolume, m: RemoteIoReq, offset: number, len: number): Promise<void> {
    const t = v.target,
      sparse = link.has(Cap.SPARSE),
      zeroes = link.has(Cap.ZEROES);
    const seek = (sparse || zeroes) && this.opts.seekData && t.dataExtents;
    const extents = seek ? t.dataExtents!(offset, offset + len) : null;
    this.stats.remoteReads++;
    if (extents && extents.length === 0 && zeroes) return this.answerZeroes(link, m, len);
    const buf = this.readPool.take(len);
    const release = () => this.readPool.give(buf);
    const n = chunkCount(len),
      useSparse = sparse && n > 1;
    const holds = chunksHoldingData(offset, len, extents);
    if (extents) {
      zeroHoles(buf, offset, len, extents, useSparse ? holds : null);
      await Promise.all(extents.map(([a, b]) => readBulk(t, buf.subarray(a - offset, b - offset), a)));
      for (const [a, b] of extents) this.stats.remoteDiskBytes += b - a;
    } else {
      await readBulk(t, buf, offset);
      this.stats.remoteDiskBytes += len;
    }
    if (useSparse) {
      const chunk = (i: number) => buf.subarray(i * SPARSE_CHUNK, Math.min((i + 1) * SPARSE_CHUNK, len));
      const present = holds.map((h, i) => h && !isZero(chunk(i)));
      let dataBytes = 0;
      for (let i = 0; i < n; i++) if (present[i]) dataBytes += Math.min(SPARSE_CHUNK, len - i * SPARSE_CHUNK);
      if (dataBytes === 0 && zeroes) {
        release();
        return this.answerZeroes(link, m, len);
      }
      if (dataBytes < len) {
        const head = encodeRemoteIoResHead(m.reqId, IO_SPARSE, m.volumeId, SPARSE_MAP_BYTES + dataBytes);
        const parts = [head, encodeSparseMap(present)];
        for (let i = 0; i < n; i++) if (present[i]) parts.push(chunk(i));
        this.stats.remoteReadBytes += dataBytes;
        this.stats.remoteZeroBytes += len - dataBytes;
        return answer(link, parts, release);
      }
    } else if (zeroes && isZero(buf)) {
      release();
      return this.answerZeroes(link, m, len);
    }
    this.stats.remoteReadBytes += len;
    return answer(link, [encodeRemoteIoResHead(m.reqId, IO_OK, m.volumeId, len), buf], release);
  }

  private answerZeroes(link: LinkPort, m: RemoteIoReq, len: number): Promise<void> | void {
    this.stats.remoteZeroBytes += len; // nothing crosses the link for a hole
    return answer(link, [encodeRemoteIoResHead(m.reqId, IO_ZEROES, m.volumeId, 0)]);
  }

  /** CHECKSUM_REQ: a digest per region, read in order (resync and verify compare them). */
  async checksum(link: LinkPort, m: ChecksumReq): Promise<void> {
    const v = this.volumes.withHubId(m.volumeId);
    const regionBytes = m.regionSectors * SECTOR,
      start = m.offsetSectors * SECTOR;
    if (!v || start + regionBytes * m.count > v.sizeBytes) {
      link.send([encodeChecksumRes(m.reqId, EINVAL, m.volumeId, Buffer.alloc(0))]);
      return;
    }
    const out = Buffer.allocUnsafe(m.count * CHECKSUM_BYTES);
    const buf = Buffer.allocUnsafe(regionBytes);
    try {
      for (let i = 0; i < m.count; i++) {
        await readBulk(v.target, buf, start + i * regionBytes);
        createHash('sha256')
          .update(buf)
          .digest()
          .copy(out, i * CHECKSUM_BYTES, 0, CHECKSUM_BYTES);
      }
      await answer(link, [encodeChecksumRes(m.reqId, IO_OK, m.volumeId, out)]);
    } catch {
      link.send([encodeChecksumRes(m.reqId, EIO, m.volumeId, Buffer.alloc(0))]);
    }
  }
}

/** Per SPARSE_CHUNK of [offset, offset + len): whether it touches a data extent (all do without extents). */
function chunksHoldingData(offset: number, len: number, extents: [number, number][] | null): boolean[] {
  const holds: boolean[] = [];
  for (let i = 0, e = 0, n = chunkCount(len); i < n; i++) {
    const a = offset + i * SPARSE_CHUNK,
      b = Math.min(a + SPARSE_CHUNK, offset + len);
    while (extents && e < extents.length && extents[e][1] <= a) e++;
    holds.push(!extents || (e < extents.length && extents[e][0] < b));
  }
  return holds;
}

/**
 * Holes read as zeroes. With a sparse answer (`holds` given) only chunks that also hold data
 * need their holes zeroed: the others are left out of the answer, neither read nor zeroed.
 */
function zeroHoles(
  buf: Buffer,
  offset: number,
  len: number,
  extents: [number, number][],
  holds: boolean[] | null,
): void {
  const zero = (a: number, b: number) => {
    if (!holds) return void buf.fill(0, a - offset, b - offset);
    for (let i = Math.floor((a - offset) / SPARSE_CHUNK); i * SPARSE_CHUNK < b - offset; i++) {
      if (holds[i]) buf.fill(0, Math.max(a - offset, i * SPARSE_CHUNK), Math.min(b - offset, (i + 1) * SPARSE_CHUNK));
    }
  };
  let at = offset;
  for (const [a, b] of extents) {
    if (a > at) zero(at, a);
    at = b;
  }
  if (at < offset + len) zero(at, offset + len);
}
