// Encoders. Each returns the frame as one Buffer, except data-bearing frames whose encoder
// returns only the header + fixed fields: the caller writes the data buffer right after it
// (socket.cork()/writev), so payload bytes are never copied.
import { crc32 } from './crc';
import { Cmd, MAGIC, HEADER_SIZE, SECTOR, Limits, CHECKSUM_BYTES, IO_OK, FLAG_CRC } from './constants';
import type { Message, VolumeInfo, Extent } from './messages';
import { encodeIdentity } from './identity';

/** u64 field from a JS number (callers hold values <= 2^53-1): two u32 writes, no BigInt. */
function writeU64(b: Buffer, v: number, o: number): number {
  if (!Number.isSafeInteger(v) || v < 0) throw new RangeError(`u64 field ${v} is not an integer in 0..2^53-1`);
  b.writeUInt32LE(v % 0x100000000, o);
  return b.writeUInt32LE(Math.floor(v / 0x100000000), o + 4);
}

function frame(cmd: Cmd, fixed: number, payloadLen = fixed): Buffer {
  const b = Buffer.allocUnsafe(HEADER_SIZE + fixed);
  b.writeUInt32LE(MAGIC, 0);
  b.writeUInt16LE(cmd, 4);
  b.writeUInt16LE(0, 6);
  b.writeUInt32LE(payloadLen, 8);
  return b;
}

function nameBytes(name: string): Buffer {
  const n = Buffer.from(name, 'utf8');
  if (n.length === 0 || n.length > Limits.maxNameBytes)
    throw new RangeError(`name "${name}" must be 1..${Limits.maxNameBytes} bytes`);
  return n;
}

export function encodeHello(version: number, caps: number, maxPayload: number, name: string): Buffer {
  const n = Buffer.from(name, 'utf8');
  if (n.length > Limits.maxNameBytes) throw new RangeError(`name too long`);
  const b = frame(Cmd.HELLO, 14 + n.length);
  b.writeUInt16LE(version, 12);
  b.writeUInt16LE(0, 14);
  b.writeUInt32LE(caps >>> 0, 16);
  b.writeUInt32LE(maxPayload >>> 0, 20);
  b.writeUInt16LE(n.length, 24);
  n.copy(b, 26);
  return b;
}

/** Prefix of a PROTECTED_WRITE; `dataLen` bytes of data follow (0 when ioStatus != 0). */
export function encodeProtectedWriteHead(
  volumeId: number,
  offsetSectors: number,
  sizeSectors: number,
  ioStatus: number,
): Buffer {
  const dataLen = ioStatus === IO_OK ? sizeSectors * SECTOR : 0;
  const b = frame(Cmd.PROTECTED_WRITE, 24, 24 + dataLen);
  writeU64(b, volumeId, 12);
  writeU64(b, offsetSectors, 20);
  b.writeUInt32LE(sizeSectors, 28);
  b.writeInt32LE(ioStatus, 32);
  return b;
}

export function encodeReportVmVolumes(volumes: VolumeInfo[]): Buffer {
  const names = volumes.map((v) => nameBytes(v.name));
  const len = 4 + names.reduce((s, n) => s + 10 + n.length, 0);
  const b = frame(Cmd.REPORT_VM_VOLUMES, len);
  let o = 12;
  o = b.writeUInt32LE(volumes.length, o);
  volumes.forEach((v, i) => {
    o = writeU64(b, v.sizeBytes, o);
    o = b.writeUInt16LE(names[i].length, o);
    o += names[i].copy(b, o);
  });
  return b;
}

export function encodeStartProtect(volumeId: number, name: string, cmd = Cmd.START_PROTECT): Buffer {
  const n = nameBytes(name);
  const b = frame(cmd, 10 + n.length);
  writeU64(b, volumeId, 12);
  b.writeUInt16LE(n.length, 20);
  n.copy(b, 22);
  return b;
}

/** STOP_PROTECT: START_PROTECT's layout under its own command (SPEC.md 5.17). */
export function encodeStopProtect(volumeId: number, name: string): Buffer {
  return encodeStartProtect(volumeId, name, Cmd.STOP_PROTECT);
}

/** VOLUME_SIZE (SPEC.md 5.18): the same frame both ways. */
export function encodeVolumeSize(volumeId: number, sizeBytes: number): Buffer {
  const b = frame(Cmd.VOLUME_SIZE, 16);
  writeU64(b, volumeId, 12);
  writeU64(b, sizeBytes, 20);
  return b;
}

/** Prefix of a REMOTE_IO_REQ; for a write, sizeSectors*512 bytes of data follow. */
export function encodeRemoteIoReqHead(
  reqId: number,
  sizeSectors: number,
  volumeId: number,
  offsetSectors: number,
  isRead: boolean,
): Buffer {
  const b = frame(Cmd.REMOTE_IO_REQ, 28, 28 + (isRead ? 0 : sizeSectors * SECTOR));
  b.writeUInt32LE(reqId >>> 0, 12);
  b.writeUInt32LE(sizeSectors, 16);
  writeU64(b, volumeId, 20);
  writeU64(b, offsetSectors, 28);
  b.writeUInt32LE(isRead ? 1 : 0, 36);
  return b;
}

/** Prefix of a REMOTE_IO_RES; `dataLen` bytes of read data follow. */
export function encodeRemoteIoResHead(reqId: number, ioStatus: number, volumeId: number, dataLen: number): Buffer {
  const b = frame(Cmd.REMOTE_IO_RES, 16, 16 + dataLen);
  b.writeUInt32LE(reqId >>> 0, 12);
  b.writeInt32LE(ioStatus, 16);
  writeU64(b, volumeId, 20);
  return b;
}

export function encodeAgentShutdown(): Buffer {
  return frame(Cmd.AGENT_SHUTDOWN, 0);
}

function u64Frame(cmd: Cmd, v: number): Buffer {
  const b = frame(cmd, 8);
  writeU64(b, v, 12);
  return b;
}
export const encodeWriteAck = (seq: number) => u64Frame(Cmd.WRITE_ACK, seq);
export const encodeWriteApplied = (seq: number) => u64Frame(Cmd.WRITE_APPLIED, seq);
export const encodeFlush = (checkpointId: number) => u64Frame(Cmd.FLUSH, checkpointId);
/** POINT (SPEC.md 5.20): the same frame both ways; the hub's request carries 0. */
export const encodePoint = (checkpointId: number) => u64Frame(Cmd.POINT, checkpointId);
export const encodePing = (nonce: number) => u64Frame(Cmd.PING, nonce);
export const encodePong = (nonce: number) => u64Frame(Cmd.PONG, nonce);

export function encodeDirtyReport(volumeId: number, reportId: number, flags: number, extents: Extent[]): Buffer {
  if (extents.length > Limits.maxExtents) throw new RangeError(`too many extents (${extents.length})`);
  const b = frame(Cmd.DIRTY_REPORT, 20 + 16 * extents.length);
  let o = writeU64(b, volumeId, 12);
  o = b.writeUInt32LE(reportId >>> 0, o);
  o = b.writeUInt32LE(flags >>> 0, o);
  o = b.writeUInt32LE(extents.length, o);
  for (const e of extents) {
    o = writeU64(b, e.offsetSectors, o);
    o = writeU64(b, e.sizeSectors, o);
  }
  return b;
}

export function encodeDirtyReportAck(volumeId: number, reportId: number): Buffer {
  const b = frame(Cmd.DIRTY_REPORT_ACK, 12);
  writeU64(b, volumeId, 12);
  b.writeUInt32LE(reportId >>> 0, 20);
  return b;
}

export function encodeChecksumReq(
  reqId: number,
  regionSectors: number,
  volumeId: number,
  offsetSectors: number,
  count: number,
): Buffer {
  const b = frame(Cmd.CHECKSUM_REQ, 28);
  b.writeUInt32LE(reqId >>> 0, 12);
  b.writeUInt32LE(regionSectors, 16);
  writeU64(b, volumeId, 20);
  writeU64(b, offsetSectors, 28);
  b.writeUInt32LE(count, 36);
  return b;
}

export function encodeChecksumRes(reqId: number, ioStatus: number, volumeId: number, digests: Buffer): Buffer {
  const count = ioStatus === IO_OK ? digests.length / CHECKSUM_BYTES : 0;
  const b = frame(Cmd.CHECKSUM_RES, 20 + (ioStatus === IO_OK ? digests.length : 0));
  b.writeUInt32LE(reqId >>> 0, 12);
  b.writeInt32LE(ioStatus, 16);
  writeU64(b, volumeId, 20);
  b.writeUInt32LE(count, 28);
  if (ioStatus === IO_OK) digests.copy(b, 32);
  return b;
}

export function encodeError(code: number, message: string): Buffer {
  let m = Buffer.from(message, 'utf8');
  if (m.length > Limits.maxErrorBytes) {
    let n = Limits.maxErrorBytes;
    while (n > 0 && (m[n] & 0xc0) === 0x80) n--; // never cut a UTF-8 sequence
    m = m.subarray(0, n);
  }
  const b = frame(Cmd.ERROR, 6 + m.length);
  b.writeUInt32LE(code, 12);
  b.writeUInt16LE(m.length, 16);
  m.copy(b, 18);
  return b;
}

/** Whole frame(s) for any message: for tests, vectors and cold paths. */
export function encode(m: Message): Buffer[] {
  switch (m.cmd) {
    case Cmd.HELLO:
      return [encodeHello(m.version, m.caps, m.maxPayload, m.name)];
    case Cmd.PROTECTED_WRITE:
      return [encodeProtectedWriteHead(m.volumeId, m.offsetSectors, m.sizeSectors, m.ioStatus), m.data];
    case Cmd.REPORT_VM_VOLUMES:
      return [encodeReportVmVolumes(m.volumes)];
    case Cmd.START_PROTECT:
      return [encodeStartProtect(m.volumeId, m.name)];
    case Cmd.STOP_PROTECT:
      return [encodeStopProtect(m.volumeId, m.name)];
    case Cmd.VOLUME_SIZE:
      return [encodeVolumeSize(m.volumeId, m.sizeBytes)];
    case Cmd.REMOTE_IO_REQ:
      return [encodeRemoteIoReqHead(m.reqId, m.sizeSectors, m.volumeId, m.offsetSectors, m.isRead), m.data];
    case Cmd.REMOTE_IO_RES:
      return [encodeRemoteIoResHead(m.reqId, m.ioStatus, m.volumeId, m.data.length), m.data];
    case Cmd.AGENT_SHUTDOWN:
      return [encodeAgentShutdown()];
    case Cmd.WRITE_ACK:
      return [encodeWriteAck(m.seq)];
    case Cmd.WRITE_APPLIED:
      return [encodeWriteApplied(m.seq)];
    case Cmd.DIRTY_REPORT:
      return [encodeDirtyReport(m.volumeId, m.reportId, m.flags, m.extents)];
    case Cmd.DIRTY_REPORT_ACK:
      return [encodeDirtyReportAck(m.volumeId, m.reportId)];
    case Cmd.CHECKSUM_REQ:
      return [encodeChecksumReq(m.reqId, m.regionSectors, m.volumeId, m.offsetSectors, m.count)];
    case Cmd.CHECKSUM_RES:
      return [encodeChecksumRes(m.reqId, m.ioStatus, m.volumeId, m.digests)];
    case Cmd.FLUSH:
      return [encodeFlush(m.checkpointId)];
    case Cmd.POINT:
      return [encodePoint(m.checkpointId)];
    case Cmd.ERROR:
      return [encodeError(m.code, m.message)];
    case Cmd.PING:
      return [encodePing(m.nonce)];
    case Cmd.PONG:
      return [encodePong(m.nonce)];
    case Cmd.IDENTITY:
      return [encodeIdentity(m.instanceId, m.volumes)];
  }
}

/**
 * The sending side of FRAME_CRC: each frame's trailer is a CRC-32 of the header and payload
 * chained from the previous frame's trailer, so a frame that is corrupted, dropped whole,
 * duplicated or reordered breaks the chain at the receiver.
 */
export class FrameSealer {
  private chain = 0;
  /** Sets FLAG_CRC in the header buffer (bufs[0]) and returns the pieces plus the trailer. */
  seal(bufs: Buffer[]): Buffer[] {
    bufs[0].writeUInt16LE(FLAG_CRC, 6);
    let c = this.chain;
    for (const b of bufs) c = crc32(b, c);
    this.chain = c >>> 0;
    const t = Buffer.allocUnsafe(4);
    t.writeUInt32LE(this.chain, 0);
    return [...bufs, t];
  }
}
