// The journal's staged records: before-images (and zero ranges) captured ahead of the small
// writes that will overwrite them (a socket read's writes, storage/journal-target.ts
// prepareWrite), encoded back to back in one buffer. The journal writes them with one pwrite
// before any of those overwrites reaches the volume, and before any other record, sync or
// close (storage/journal.ts flushStaged): one append per read instead of one per 4 KiB write.
// Owns the buffer and what the listeners will hear of each staged record once it is written.
import { HEADER_BYTES, RecordType, ZERO_PAYLOAD_BYTES, encodeHeader } from './journal-format';
import { assert } from './assert';

/** Bytes of staged records at most; a record that does not fit waits for the stage to be written. */
export const STAGE_BYTES = 256 * 1024;

/** Told of a written record: volume, its byte range, where its bytes are (-1: a zero range). */
export type StagedListener = (vol: number, offset: number, length: number, dataPos: number) => void;

export class RecordStage {
  private buf: Buffer | null = null; // allocated at the first staged record
  /** Bytes staged, headers included. */
  bytes = 0;
  // vol, offset, length, payload start in the stage (-1: a zero range) per staged record
  private readonly events: number[] = [];

  /** A record of `n` payload bytes fits an empty stage. */
  static holds(n: number): boolean {
    return HEADER_BYTES + n <= STAGE_BYTES;
  }

  /** A record of `n` payload bytes fits what is left of the stage now. */
  fits(n: number): boolean {
    return this.bytes + HEADER_BYTES + n <= STAGE_BYTES;
  }

  /** Where the next record's `n` payload bytes go (fits(n) holds); fill them, then add(). */
  room(n: number): Buffer {
    assert(this.fits(n), 'a staged record fits the stage');
    const at = this.bytes + HEADER_BYTES;
    return (this.buf ??= Buffer.allocUnsafeSlow(STAGE_BYTES)).subarray(at, at + n);
  }

  /** The BEFORE record whose `n` payload bytes room(n) returned, now filled: its header goes in front. */
  addBefore(vol: number, offset: number, n: number): void {
    this.add(RecordType.BEFORE, vol, offset, n, this.bytes + HEADER_BYTES);
  }

  /** A ZERO record: [offset, offset + length) of `vol` was zero (fits(ZERO_PAYLOAD_BYTES) holds). */
  addZero(vol: number, offset: number, length: number): void {
    this.room(ZERO_PAYLOAD_BYTES).writeUInt32LE(length, 0);
    this.add(RecordType.ZERO, vol, offset, length, -1);
  }

  /** The staged bytes, to be written in one piece. */
  view(): Buffer {
    assert(this.buf !== null && this.bytes > 0, 'records are staged');
    return this.buf.subarray(0, this.bytes);
  }

  /**
   * The staged bytes were written at journal position `at` (or lost: `at` null): each record's
   * listeners hear of it (with where its payload is), in order, and the stage is empty again.
   */
  written(at: number | null, listeners: Iterable<StagedListener>): void {
    const ev = this.events;
    this.bytes = 0;
    try {
      if (at !== null)
        for (const l of listeners)
          for (let i = 0; i < ev.length; i += 4) l(ev[i], ev[i + 1], ev[i + 2], ev[i + 3] < 0 ? -1 : at + ev[i + 3]);
    } finally {
      ev.length = 0;
    }
  }

  private add(type: RecordType, vol: number, offset: number, length: number, payloadAt: number): void {
    const at = this.bytes,
      buf = this.buf!;
    const n = type === RecordType.ZERO ? ZERO_PAYLOAD_BYTES : length;
    const payload = buf.subarray(at + HEADER_BYTES, at + HEADER_BYTES + n);
    encodeHeader(
      buf.subarray(at, at + HEADER_BYTES),
      { type, sub: vol, arg: offset, time: Date.now(), payloadBytes: n },
      payload,
    );
    this.bytes = at + HEADER_BYTES + n;
    this.events.push(vol, offset, length, payloadAt);
  }
}
