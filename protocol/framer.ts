// Incremental frame splitter over arbitrary TCP chunks: a frame may be split anywhere and a
// chunk may hold many frames. A payload inside one chunk is passed on as a zero-copy view.
// One spanning chunks and no larger than `directMax` gets its own buffer once part of it has
// arrived, and target() offers the rest of that buffer so the reader can receive straight into
// it (src/net-read.ts); any other is joined once when its last byte arrives. Memory follows the
// bytes received, not the length a header claims. Pure: no sockets.
import { crc32 } from './crc';
import { MAGIC, HEADER_SIZE, Limits, Cmd, FLAG_CRC } from './constants';
import { ProtocolError } from './errors';

export type FrameHandler = (cmd: number, payload: Buffer) => void;

const KNOWN = new Set<number>(Object.values(Cmd).filter((v): v is number => typeof v === 'number'));

export class FrameDecoder {
  private pending: Buffer[] = [];
  private pendingBytes = 0;
  private cmd = -1; // >= 0 while a header has been read and its payload is awaited
  private need = 0;
  private parts: Buffer[] = []; // payload pieces of a frame spanning chunks
  private filled = 0;
  private failed = false;
  private crc = -1; // header CRC of the current frame when it carries a trailer, else -1
  // Checksum policy: 'peer' (once the peer checksums a frame, every later one must be), 'off' (a
  // checksummed frame is an error: FRAME_CRC not agreed yet) or 'on' (every frame must be). The
  // owner switches it as its handshake goes (SPEC.md section 3.1); frames already passed on are not rechecked.
  private policy: 'peer' | 'off' | 'on' = 'peer';
  private crcSeen = false;
  private chain = 0; // the last trailer: each frame's CRC continues from it (FrameSealer)
  private dest: Buffer | null = null; // the payload buffer being filled in place (directMax)
  private sum = 0; // CRC of dest's body bytes [0, summed), taken while they are still in cache
  private summed = 0;
  private lent = false; // a view of the chunk being consumed was passed on (a payload)

  /**
   * `alloc` supplies the buffer a payload spanning chunks is joined into (a pool, say); the
   * handler then owns it. A payload spanning chunks, of up to `directMax` bytes, gets its
   * buffer once `directAfter` of its bytes have arrived, and is filled in place from then on
   * (directMax 0: always join at the end). Memory still follows bytes received, within 32x.
   */
  constructor(
    private readonly onFrame: FrameHandler,
    private readonly maxPayload: number = Limits.maxPayload,
    private readonly alloc: (n: number, cmd: number) => Buffer = (n) => Buffer.allocUnsafe(n),
    private readonly directMax = 0,
    private readonly directAfter = 32 * 1024,
  ) {}

  /**
   * Where the reader may put the next bytes: the unfilled rest of the payload buffer being
   * filled, when at least `min` bytes are missing; null otherwise (then push() a chunk).
   */
  target(min = 16 * 1024): Buffer | null {
    if (this.dest === null || this.failed || this.need - this.filled < min) return null;
    return this.dest.subarray(this.filled, this.need);
  }

  /** n bytes were received into the last target(). */
  direct(n: number): void {
    if (this.failed) throw new ProtocolError('decoder already failed');
    try {
      if (this.dest === null || !(n > 0 && this.filled + n <= this.need)) {
        throw new ProtocolError(`direct read of ${n} bytes outside the payload being filled`);
      }
      this.filled += n;
      this.extendSum();
      if (this.filled === this.need) this.complete();
    } catch (e) {
      this.failed = true;
      throw e;
    }
  }

  /** FRAME_CRC is not agreed (yet): a frame with FLAG_CRC from now on is a protocol error. */
  refuseChecksums(): void {
    this.policy = 'off';
  }

  /** FRAME_CRC is agreed and the peer seals from here on: a frame without FLAG_CRC is a protocol error. */
  requireChecksums(): void {
    this.policy = 'on';
  }

  /**
   * push() for bytes received into a chunk of the reader's own (src/net-read.ts). False when no
   * view of `b` outlives the call (its frames were parsed, or copied into a payload's buffer):
   * the reader may reuse its memory. Views held from earlier chunks make it true, conservatively.
   */
  chunk(b: Buffer): boolean {
    this.lent = false;
    this.push(b);
    return this.lent || this.parts.length > 0 || this.pending.length > 0;
  }

  /** Feed one chunk. Throws ProtocolError on a bad frame; the decoder is then dead. */
  push(chunk: Buffer): void {
    if (this.failed) throw new ProtocolError('decoder already failed');
    try {
      this.consume(chunk);
    } catch (e) {
      this.failed = true;
      throw e;
    }
  }

  /** Bytes held for an incomplete frame (bounded by header + maxPayload). */
  get buffered(): number {
    return this.pendingBytes + this.filled;
  }

  private consume(chunk: Buffer): void {
    let off = 0;
    while (off < chunk.length) {
      if (this.cmd < 0) {
        // Need a header: it may straddle chunks, so gather up to 12 bytes.
        if (this.pendingBytes === 0 && chunk.length - off >= HEADER_SIZE) {
          this.header(chunk, off);
          off += HEADER_SIZE;
        } else {
          const take = Math.min(HEADER_SIZE - this.pendingBytes, chunk.length - off);
          this.pending.push(chunk.subarray(off, off + take));
          this.pendingBytes += take;
          off += take;
          if (this.pendingBytes < HEADER_SIZE) return;
          const h = Buffer.concat(this.pending, HEADER_SIZE);
          this.pending = [];
          this.pendingBytes = 0;
          this.header(h, 0);
        }
        if (this.need === 0) {
          this.emit(Buffer.alloc(0));
          continue;
        }
      }
      // Payload.
      const avail = chunk.length - off;
      if (this.filled === 0 && avail >= this.need) {
        const payload = chunk.subarray(off, off + this.need);
        off += this.need;
        this.lent = true;
        this.emit(payload);
        continue;
      }
      const take = Math.min(this.need - this.filled, avail);
      if (this.dest !== null) chunk.copy(this.dest, this.filled, off, off + take);
      else this.parts.push(chunk.subarray(off, off + take)); // memory follows bytes received
      this.filled += take;
      off += take;
      if (
        this.dest === null &&
        this.filled < this.need &&
        this.need <= this.directMax &&
        this.filled >= this.directAfter
      ) {
        // Enough of it is here to be worth its own buffer; the rest can be received in place.
        this.dest = this.joinParts();
        this.sum = this.crc;
        this.summed = 0;
      }
      this.extendSum();
      if (this.filled === this.need) this.complete();
    }
  }

  /** Checksum the body bytes just received in place: reading them again later means memory. */
  private extendSum(): void {
    if (this.crc < 0 || this.dest === null) return;
    const end = Math.min(this.filled, this.need - 4);
    if (end <= this.summed) return;
    this.sum = crc32(this.dest.subarray(this.summed, end), this.sum) >>> 0;
    this.summed = end;
  }

  /** The payload's buffer, holding the parts received so far. */
  private joinParts(): Buffer {
    const b = this.alloc(this.need, this.cmd);
    let at = 0;
    for (const p of this.parts) at += p.copy(b, at);
    this.parts = [];
    return b;
  }

  private complete(): void {
    let payload = this.dest,
      sum = -1;
    this.dest = null;
    if (payload === null) payload = this.joinParts();
    else if (this.crc >= 0) sum = this.sum;
    this.filled = 0;
    this.emit(payload, sum);
  }

  private header(b: Buffer, o: number): void {
    const magic = b.readUInt32LE(o);
    if (magic !== MAGIC) throw new ProtocolError(`bad magic 0x${magic.toString(16).padStart(8, '0')}`);
    const cmd = b.readUInt16LE(o + 4);
    if (!KNOWN.has(cmd)) throw new ProtocolError(`unknown command ${cmd}`);
    const flags = b.readUInt16LE(o + 6);
    if (flags & ~FLAG_CRC) throw new ProtocolError(`reserved flags 0x${flags.toString(16)} set`);
    const len = b.readUInt32LE(o + 8);
    if (len > this.maxPayload) throw new ProtocolError(`payload ${len} bytes exceeds limit ${this.maxPayload}`);
    if (flags && this.policy === 'off') {
      throw new ProtocolError(`${Cmd[cmd]} frame carries a checksum (FLAG_CRC) but FRAME_CRC was not agreed`);
    }
    if (!flags && this.policy === 'on') {
      throw new ProtocolError(`${Cmd[cmd]} frame without checksum (FLAG_CRC) although FRAME_CRC was agreed`);
    }
    if (!flags && this.crcSeen) throw new ProtocolError('frame without checksum after checksums began');
    this.cmd = cmd;
    this.need = len + (flags ? 4 : 0);
    this.crc = flags ? crc32(b.subarray(o, o + HEADER_SIZE), this.chain) : -1;
  }

  /** `sum`: the body's CRC when already taken as it arrived (extendSum), else -1. */
  private emit(payload: Buffer, sum = -1): void {
    const cmd = this.cmd;
    this.cmd = -1;
    this.need = 0;
    if (this.crc >= 0) {
      const body = payload.subarray(0, payload.length - 4);
      const c = sum >= 0 ? sum : crc32(body, this.crc) >>> 0;
      if (c !== payload.readUInt32LE(payload.length - 4)) throw new ProtocolError('frame checksum mismatch');
      this.chain = c;
      this.crcSeen = true;
      payload = body;
    }
    this.onFrame(cmd, payload);
  }
}
