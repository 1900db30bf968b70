// CRC-32 for frame checksums: zlib's polynomial and chaining, computed by the native addon's
// carry-less-multiply folding (native/crc32.c, ~5x zlib's speed here) when it is built, by
// zlib otherwise. Same results either way.
import { crc32 as zlibCrc32 } from 'node:zlib';
import { nativeAddon } from '../native/addon';

type Crc = (data: Buffer, prev?: number) => number;
// without folding hardware zlib is faster; without the addon zlib it is
const fast = nativeAddon?.CRC32_FOLDED ? nativeAddon.crc32 : null;

const NATIVE_MIN = 512; // below this the call overheads are alike

export const crc32: Crc = fast
  ? (data, prev = 0) => (data.length >= NATIVE_MIN ? fast!(data, prev) : zlibCrc32(data, prev))
  : (data, prev = 0) => zlibCrc32(data, prev);
