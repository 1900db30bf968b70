// Opening a journal segment: its records walked in order, each checked where its payload is
// read, and the first bad one (a torn tail: a crash mid-append) cut off with everything after
// it. The caller hears of each checkpoint and drop record; the points are its to keep.
import * as fs from 'node:fs';
import { HEADER_BYTES, RecordHeader, RecordType, crcMatches, decodeHeader, position } from './journal-format';

/** A segment opened for appending: its descriptor and the bytes of good records in it. */
export interface OpenedSegment {
  fd: number;
  bytes: number;
}

/**
 * Walk segment `n` in `file`. Payloads are read (and CRC-checked) for checkpoints and, in the
 * `last` segment (the only one a crash can tear: earlier ones were synced when closed), for all.
 * `onRecord` gets each checkpoint and drop record, with its payload and the position after it.
 */
export function recoverSegment(
  file: string,
  n: number,
  last: boolean,
  onRecord: (h: RecordHeader, payload: Buffer, end: number) => void,
  warn?: (fields: object, msg: string) => void,
): OpenedSegment {
  const fd = fs.openSync(file, 'r+');
  const size = fs.fstatSync(fd).size;
  const hdr = Buffer.alloc(HEADER_BYTES);
  let off = 0;
  while (off + HEADER_BYTES <= size) {
    fs.readSync(fd, hdr, 0, HEADER_BYTES, off);
    const h = decodeHeader(hdr);
    if (!h || off + HEADER_BYTES + h.payloadBytes > size) break;
    const payload = Buffer.alloc(h.type === RecordType.CHECKPOINT || last ? h.payloadBytes : 0);
    if (payload.length) fs.readSync(fd, payload, 0, payload.length, off + HEADER_BYTES);
    if (payload.length === h.payloadBytes && !crcMatches(hdr, payload)) break;
    off += HEADER_BYTES + h.payloadBytes;
    if (h.type === RecordType.CHECKPOINT || h.type === RecordType.DROP) onRecord(h, payload, position(n, off));
  }
  if (off < size) {
    warn?.({ segment: file, offset: off, cutBytes: size - off }, 'journal: torn or bad tail cut off');
    fs.ftruncateSync(fd, off);
    fs.fdatasyncSync(fd);
  }
  return { fd, bytes: off };
}
