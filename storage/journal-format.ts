// The journal's on-disk record format: append-only segments of CRC-protected records. A record
// is a 32-byte header and a payload; the CRC covers the header after it and the payload, so a
// torn tail (a crash mid-append) reads as a bad record and is cut off there. Pure codecs.
import { crc32 } from '../protocol/crc';

export const RECORD_MAGIC = 0x314e4a52; // "RJN1"
export const HEADER_BYTES = 32;
/** Before-images are kept per journal block: a write is widened to whole blocks. */
export const JOURNAL_BLOCK = 4096;
/** A record's payload is at most this (a before-image is at most one write, 1 MiB, widened). */
export const MAX_PAYLOAD = (1 << 20) + 2 * JOURNAL_BLOCK;

export const enum RecordType {
  /** The content of [offset, offset + length) of a volume just before it was overwritten. */
  BEFORE = 1,
  /** A consistent point of the VM's write stream: every record after it is newer. */
  CHECKPOINT = 2,
  /** Every point newer than checkpoint `arg` is gone (the volume was rolled back to it: failover --at). */
  DROP = 3,
  /**
   * [offset, offset + length) of a volume was known zero just before it was overwritten (a
   * region never written on a replica this hub created): a BEFORE record without the zeros.
   * The payload is the length (u32).
   */
  ZERO = 4,
}

/** A ZERO record's payload: the length of the zero range. */
export const ZERO_PAYLOAD_BYTES = 4;

export type CheckpointKind = 'flush' | 'interval' | 'tag' | 'last-clean';
export const KINDS: readonly CheckpointKind[] = ['flush', 'interval', 'tag', 'last-clean'];

export interface RecordHeader {
  type: RecordType;
  /** BEFORE, ZERO: the volume's index in the journal's volume table. CHECKPOINT: the kind's index. DROP: 0. */
  sub: number;
  /** BEFORE, ZERO: byte offset in the volume. CHECKPOINT: the checkpoint id. DROP: the newest point kept. */
  arg: number;
  /** Milliseconds since the epoch when it was appended. */
  time: number;
  payloadBytes: number;
}

/**
 * Header layout, little-endian: u32 magic, u32 crc (of bytes 8..32 and the payload), u32
 * payload length, u8 type, u8 zero, u16 sub, f64 arg, f64 time.
 */
export function encodeHeader(out: Buffer, h: RecordHeader, payload: Buffer): Buffer {
  out.writeUInt32LE(RECORD_MAGIC, 0);
  out.writeUInt32LE(h.payloadBytes, 8);
  out.writeUInt8(h.type, 12);
  out.writeUInt8(0, 13);
  out.writeUInt16LE(h.sub, 14);
  out.writeDoubleLE(h.arg, 16);
  out.writeDoubleLE(h.time, 24);
  out.writeUInt32LE(crc32(payload, crc32(out.subarray(8, HEADER_BYTES))) >>> 0, 4);
  return out;
}

/** The header in `buf`, or null when it is not a record header (no magic, bad length or type). */
export function decodeHeader(buf: Buffer): RecordHeader | null {
  if (buf.length < HEADER_BYTES || buf.readUInt32LE(0) !== RECORD_MAGIC) return null;
  const payloadBytes = buf.readUInt32LE(8),
    type = buf.readUInt8(12);
  if (payloadBytes > MAX_PAYLOAD || type < RecordType.BEFORE || type > RecordType.ZERO) return null;
  return { type, sub: buf.readUInt16LE(14), arg: buf.readDoubleLE(16), time: buf.readDoubleLE(24), payloadBytes };
}

/** True when the record's CRC matches its header and payload. */
export function crcMatches(header: Buffer, payload: Buffer): boolean {
  return header.readUInt32LE(4) === crc32(payload, crc32(header.subarray(8, HEADER_BYTES))) >>> 0;
}

/**
 * A position in the journal: segment number and byte offset in it, as one number (segments are
 * under 4 GiB, and 2^53 leaves room for 2^21 segments).
 */
export const SEGMENT_SPAN = 2 ** 32;
export const position = (segment: number, offset: number): number => segment * SEGMENT_SPAN + offset;
export const segmentOf = (pos: number): number => Math.floor(pos / SEGMENT_SPAN);
export const offsetOf = (pos: number): number => pos % SEGMENT_SPAN;

/** Segment file names: 12 digits, so that they sort by number. */
export const segmentName = (n: number): string => `${String(n).padStart(12, '0')}.jnl`;
export function segmentNumber(name: string): number | null {
  const m = /^(\d{12})\.jnl$/.exec(name);
  return m ? Number(m[1]) : null;
}
