// IO_SPARSE read answers (cap SPARSE): the requested range in SPARSE_CHUNK pieces, a one-sector
// map saying which pieces follow, and only those; absent pieces read as zeroes. Holes and zero
// runs inside a read then cross the link as one bit each. No sockets here.
import { SPARSE_CHUNK, SPARSE_MAP_BYTES, Limits } from './constants';
import { ProtocolError } from './errors';

/** One piece of a sparse answer: `data` for a present chunk run, null for a zero run. */
export interface SparsePiece {
  offset: number;
  length: number;
  data: Buffer | null;
}

export function chunkCount(len: number): number {
  return Math.ceil(len / SPARSE_CHUNK);
}

/** The map for `present` (chunk i holds data), followed by nothing: callers append the chunks. */
export function encodeSparseMap(present: boolean[]): Buffer {
  if (present.length > SPARSE_MAP_BYTES * 8) throw new RangeError(`${present.length} chunks exceed the sparse map`);
  const map = Buffer.alloc(SPARSE_MAP_BYTES);
  present.forEach((p, i) => {
    if (p) map[i >> 3] |= 1 << (i & 7);
  });
  return map;
}

/**
 * Split the answer to a read of `len` bytes into runs relative to the read's start; consecutive
 * present chunks form one data run (they are contiguous in the payload). Throws a ProtocolError
 * when the payload does not match its map.
 */
export function decodeSparse(len: number, payload: Buffer): SparsePiece[] {
  const n = chunkCount(len);
  if (len <= 0 || len > Limits.maxIoBytes) throw new ProtocolError(`IO_SPARSE answer to a read of ${len} bytes`);
  if (payload.length < SPARSE_MAP_BYTES)
    throw new ProtocolError(`IO_SPARSE answer of ${payload.length} bytes has no chunk map`);
  // bits past the last chunk must be clear
  let stray = n & 7 ? payload[n >> 3] >> (n & 7) : 0;
  for (let b = (n + 7) >> 3; b < SPARSE_MAP_BYTES; b++) stray |= payload[b];
  if (stray) throw new ProtocolError(`IO_SPARSE map names chunks past the ${n} of the read`);
  const out: SparsePiece[] = [];
  let at = SPARSE_MAP_BYTES;
  for (let i = 0; i < n;) {
    const present = (payload[i >> 3] & (1 << (i & 7))) !== 0;
    let j = i + 1;
    while (j < n && ((payload[j >> 3] & (1 << (j & 7))) !== 0) === present) j++;
    const offset = i * SPARSE_CHUNK,
      length = Math.min(j * SPARSE_CHUNK, len) - offset;
    if (present) {
      if (at + length > payload.length)
        throw new ProtocolError(`IO_SPARSE payload of ${payload.length} bytes is shorter than its map says`);
      out.push({ offset, length, data: payload.subarray(at, at + length) });
      at += length;
    } else out.push({ offset, length, data: null });
    i = j;
  }
  if (at !== payload.length)
    throw new ProtocolError(`IO_SPARSE payload of ${payload.length} bytes, its map accounts for ${at}`);
  return out;
}
