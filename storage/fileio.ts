// posix_fadvise and SEEK_DATA/SEEK_HOLE through the optional native addon (native/fileio.c,
// built by `npm install`). Without it advice is a no-op and every range counts as data:
// correctness never depends on either, only speed does.
import { nativeAddon as native, nativeUnavailable } from '../native/addon';

/** Why advice is unavailable ('' when it is). */
export { nativeUnavailable };

/** O_DIRECT alignment of file offsets, lengths and memory: 4096 covers every common device. */
export const DIRECT_ALIGN = 4096;

/** No readahead on this open file: its reads leave order-0 pages, not large folios. */
export function adviseRandom(fd: number): number {
  return native ? native.fadvise(fd, 0, 0, native.RANDOM) : -1;
}

/** Drop the clean cached pages of [offset, offset + length) (0 = to the end). */
export function dropCache(fd: number, offset: number, length: number): number {
  return native ? native.fadvise(fd, offset, length, native.DONTNEED) : -1;
}

/** Read [offset, offset + length) into the page cache in the background (order-0 pages, whatever
 * the descriptor's advice); -1 when unavailable. */
export function adviseWillNeed(fd: number, offset: number, length: number): number {
  return native?.WILLNEED !== undefined ? native.fadvise(fd, offset, length, native.WILLNEED) : -1;
}

/** The buffer's address modulo `align`; -1 when unknown (no addon). */
export function misalign(buf: Buffer, align: number): number {
  return native?.misalign ? native.misalign(buf, align) : -1;
}

/** Pages of [offset, offset + length) in the page cache; -1 when unknown (no addon, Linux < 6.5). */
export function cachedPages(fd: number, offset: number, length: number): number {
  if (!native?.cached) return -1;
  const n = native.cached(fd, offset, length);
  return n < 0 ? -1 : n;
}

/**
 * The data extents of [start, end) of a file, clipped to it, from SEEK_DATA/SEEK_HOLE; null
 * when unknown (no addon, or a file system or block device without them): read it all.
 */
export function dataExtents(fd: number, start: number, end: number): [number, number][] | null {
  if (!native) return null;
  const out: [number, number][] = [];
  let pos = start;
  while (pos < end) {
    const d = native.seek(fd, pos, native.SEEK_DATA);
    if (d === -native.ENXIO) break; // no data from pos to EOF
    if (d < 0) return null;
    if (d >= end) break;
    const h = native.seek(fd, d, native.SEEK_HOLE);
    if (h < 0) return null;
    out.push([d, Math.min(h, end)]);
    pos = h;
  }
  return out;
}
