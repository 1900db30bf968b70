// CRC-32 for frame checksums: zlib's polynomial and chaining, computed by the native addon's
// carry-less-multiply folding (native/crc32.c, ~5x zlib's speed here) when it is built, by
// zlib otherwise. Same results either way.
import * as path from 'node:path';
import { crc32 as zlibCrc32 } from 'node:zlib';

type Crc = (data: Buffer, prev?: number) => number;
let fast: ((data: Buffer, prev: number) => number) | null = null;
try {
  const n = require(path.join(__dirname, '..', '..', 'build', 'Release', 'rephub_native.node')) as { crc32: (d: Buffer, p: number) => number; CRC32_FOLDED: number };
  if (n.CRC32_FOLDED) fast = n.crc32; // without folding hardware zlib is faster
} catch { /* addon not built: zlib */ }

const NATIVE_MIN = 512; // below this the call overheads are alike

export const crc32: Crc = fast
  ? (data, prev = 0) => (data.length >= NATIVE_MIN ? fast!(data, prev) : zlibCrc32(data, prev))
  : (data, prev = 0) => zlibCrc32(data, prev);
