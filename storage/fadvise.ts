// posix_fadvise through the optional native addon (native/fadvise.c, built by `npm install`).
// Without it every call is a no-op: correctness never depends on advice, only speed does.
import * as path from 'node:path';

interface Native { fadvise(fd: number, offset: number, length: number, advice: number): number; RANDOM: number; DONTNEED: number }

let native: Native | null = null;
let loadError = '';
try {
  native = require(path.join(__dirname, '..', '..', 'build', 'Release', 'rephub_native.node')) as Native;
} catch (e: any) {
  loadError = e.message;
}

/** Why advice is unavailable ('' when it is). */
export const fadviseUnavailable = (): string => (native ? '' : `native addon not built (${loadError}); run npm install`);

/** No readahead on this open file: its reads leave order-0 pages, not large folios. */
export function adviseRandom(fd: number): number {
  return native ? native.fadvise(fd, 0, 0, native.RANDOM) : -1;
}

/** Drop the clean cached pages of [offset, offset + length) (0 = to the end). */
export function dropCache(fd: number, offset: number, length: number): number {
  return native ? native.fadvise(fd, offset, length, native.DONTNEED) : -1;
}
