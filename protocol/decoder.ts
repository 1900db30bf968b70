// Payload decoders, one binary-parser per message. Pure: bytes in, Message out, ProtocolError
// on anything malformed. The framer has already bounded the payload length.
import { Parser } from 'binary-parser';
import { Cmd, Limits, SECTOR, CHECKSUM_BYTES, IO_OK } from './constants';
import { ProtocolError } from './errors';
import type { Message, VolumeInfo, Extent } from './messages';
import { decodeIdentity } from './identity';

const le = () => new Parser().endianness('little');
// Names are raw bytes here, decoded strictly below: binary-parser's string() uses a default TextDecoder,
// which strips a leading U+FEFF and replaces invalid bytes with U+FFFD.
const name = (p: Parser, field = 'name') => p.uint16('nameLen').buffer(field, { length: 'nameLen' });
const strict = new TextDecoder('utf-8', { fatal: true, ignoreBOM: true });
const lenient = new TextDecoder('utf-8', { ignoreBOM: true });
function utf8(b: Buffer, what: string): string {
  try {
    return strict.decode(b);
  } catch {
    throw new ProtocolError(`${what}: name is not valid UTF-8`);
  }
}

const P = {
  hello: name(le().uint16('version').uint16('reserved').uint32('caps').uint32('maxPayload')),
  write: le().uint64('volumeId').uint64('offsetSectors').uint32('sizeSectors').int32('ioStatus'),
  volumes: le()
    .uint32('count')
    .array('volumes', {
      type: name(le().uint64('sizeBytes')),
      length: 'count',
    }),
  startProtect: name(le().uint64('volumeId')),
  ioReq: le().uint32('reqId').uint32('sizeSectors').uint64('volumeId').uint64('offsetSectors').uint32('isRead'),
  ioRes: le().uint32('reqId').int32('ioStatus').uint64('volumeId'),
  seq: le().uint64('seq'),
  dirty: le()
    .uint64('volumeId')
    .uint32('reportId')
    .uint32('flags')
    .uint32('count')
    .array('extents', {
      type: le().uint64('offsetSectors').uint64('sizeSectors'),
      length: 'count',
    }),
  dirtyAck: le().uint64('volumeId').uint32('reportId'),
  volumeSize: le().uint64('volumeId').uint64('sizeBytes'),
  csumReq: le().uint32('reqId').uint32('regionSectors').uint64('volumeId').uint64('offsetSectors').uint32('count'),
  csumRes: le().uint32('reqId').int32('ioStatus').uint64('volumeId').uint32('count'),
  error: le().uint32('code').uint16('msgLen').buffer('message', { length: 'msgLen' }),
};
const FIXED = { write: 24, ioReq: 28, ioRes: 16, csumRes: 20 };

/** Where the data of a PROTECTED_WRITE or REMOTE_IO_RES starts in its payload (to receive it aligned); 0 for others. */
export function dataOffset(cmd: number): number {
  return cmd === Cmd.PROTECTED_WRITE ? FIXED.write : cmd === Cmd.REMOTE_IO_RES ? FIXED.ioRes : 0;
}

function num(v: bigint | number, field: string): number {
  if (typeof v === 'number') return v;
  if (v > BigInt(Number.MAX_SAFE_INTEGER)) throw new ProtocolError(`${field} ${v} exceeds 2^53-1`);
  return Number(v);
}

function parse(p: Parser, payload: Buffer, what: string): any {
  try {
    return p.parse(payload);
  } catch (e) {
    throw new ProtocolError(`truncated ${what} (${payload.length} bytes)`);
  }
}

function exact(payload: Buffer, size: number, what: string): void {
  if (payload.length !== size) throw new ProtocolError(`${what}: payload ${payload.length} bytes, expected ${size}`);
}

function checkName(s: string, nameLen: number, what: string): string {
  if (nameLen === 0 || nameLen > Limits.maxNameBytes)
    throw new ProtocolError(`${what}: name length ${nameLen} out of 1..${Limits.maxNameBytes}`);
  return s;
}

/** Size fields are validated against the actual payload, so a lying length never allocates. */
function ioBytes(sizeSectors: number, what: string): number {
  const bytes = sizeSectors * SECTOR;
  if (sizeSectors === 0 || bytes > Limits.maxIoBytes)
    throw new ProtocolError(`${what}: size ${sizeSectors} sectors out of 1..${Limits.maxIoBytes / SECTOR}`);
  return bytes;
}

/** One frame's payload as a message; throws ProtocolError for anything malformed. */
export function decode(cmd: number, payload: Buffer): Message {
  switch (cmd) {
    case Cmd.HELLO:
      return decodeHello(payload);
    case Cmd.PROTECTED_WRITE:
      return decodeProtectedWrite(payload);
    case Cmd.REPORT_VM_VOLUMES:
      return decodeReportVmVolumes(payload);
    case Cmd.START_PROTECT:
      return decodeStartProtect(payload);
    case Cmd.STOP_PROTECT:
      return decodeStopProtect(payload);
    case Cmd.VOLUME_SIZE:
      return decodeVolumeSize(payload);
    case Cmd.REMOTE_IO_REQ:
      return decodeRemoteIoReq(payload);
    case Cmd.REMOTE_IO_RES:
      return decodeRemoteIoRes(payload);
    case Cmd.AGENT_SHUTDOWN:
      return decodeAgentShutdown(payload);
    case Cmd.WRITE_ACK:
      return decodeWriteAck(payload);
    case Cmd.WRITE_APPLIED:
      return decodeWriteApplied(payload);
    case Cmd.DIRTY_REPORT:
      return decodeDirtyReport(payload);
    case Cmd.DIRTY_REPORT_ACK:
      return decodeDirtyReportAck(payload);
    case Cmd.CHECKSUM_REQ:
      return decodeChecksumReq(payload);
    case Cmd.CHECKSUM_RES:
      return decodeChecksumRes(payload);
    case Cmd.FLUSH:
      return decodeFlush(payload);
    case Cmd.POINT:
      return decodePoint(payload);
    case Cmd.ERROR:
      return decodeError(payload);
    case Cmd.IDENTITY:
      return decodeIdentity(payload);
    case Cmd.PING:
    case Cmd.PONG:
      return decodeNonce(cmd, payload);
    default:
      throw new ProtocolError(`unknown command ${cmd}`);
  }
}

function decodeHello(payload: Buffer): Message {
  const cmd = Cmd.HELLO;
  const r = parse(P.hello, payload, 'HELLO');
  exact(payload, 14 + r.nameLen, 'HELLO');
  if (r.nameLen > Limits.maxNameBytes) throw new ProtocolError(`HELLO: name too long (${r.nameLen})`);
  return { cmd, version: r.version, caps: r.caps, maxPayload: r.maxPayload, name: utf8(r.name, 'HELLO') };
}

function decodeProtectedWrite(payload: Buffer): Message {
  const cmd = Cmd.PROTECTED_WRITE;
  if (payload.length < FIXED.write) throw new ProtocolError(`truncated PROTECTED_WRITE (${payload.length} bytes)`);
  const r = P.write.parse(payload) as any;
  const bytes = ioBytes(r.sizeSectors, 'PROTECTED_WRITE');
  exact(payload, FIXED.write + (r.ioStatus === IO_OK ? bytes : 0), 'PROTECTED_WRITE');
  return {
    cmd,
    volumeId: num(r.volumeId, 'volume_id'),
    offsetSectors: num(r.offsetSectors, 'offset_sectors'),
    sizeSectors: r.sizeSectors,
    ioStatus: r.ioStatus,
    data: payload.subarray(FIXED.write),
  };
}

function decodeReportVmVolumes(payload: Buffer): Message {
  const cmd = Cmd.REPORT_VM_VOLUMES;
  if (payload.length >= 4 && payload.readUInt32LE(0) > Limits.maxVolumes) {
    throw new ProtocolError(`REPORT_VM_VOLUMES: ${payload.readUInt32LE(0)} volumes exceeds ${Limits.maxVolumes}`);
  }
  const r = parse(P.volumes, payload, 'REPORT_VM_VOLUMES');
  let size = 4;
  const volumes: VolumeInfo[] = r.volumes.map((v: any) => {
    size += 10 + v.nameLen;
    return { name: v.name, nameLen: v.nameLen, sizeBytes: v.sizeBytes };
  });
  exact(payload, size, 'REPORT_VM_VOLUMES');
  return {
    cmd,
    volumes: volumes.map((v: any) => ({
      name: checkName(utf8(v.name, 'REPORT_VM_VOLUMES'), v.nameLen, 'REPORT_VM_VOLUMES'),
      sizeBytes: num(v.sizeBytes, 'size_bytes'),
    })),
  };
}

function decodeStartProtect(payload: Buffer): Message {
  const r = parse(P.startProtect, payload, 'START_PROTECT');
  exact(payload, 10 + r.nameLen, 'START_PROTECT');
  checkName('', r.nameLen, 'START_PROTECT');
  return { cmd: Cmd.START_PROTECT, volumeId: num(r.volumeId, 'volume_id'), name: utf8(r.name, 'START_PROTECT') };
}

/** STOP_PROTECT has START_PROTECT's layout (SPEC.md 5.17). */
function decodeStopProtect(payload: Buffer): Message {
  const r = parse(P.startProtect, payload, 'STOP_PROTECT');
  exact(payload, 10 + r.nameLen, 'STOP_PROTECT');
  checkName('', r.nameLen, 'STOP_PROTECT');
  return { cmd: Cmd.STOP_PROTECT, volumeId: num(r.volumeId, 'volume_id'), name: utf8(r.name, 'STOP_PROTECT') };
}

function decodeRemoteIoReq(payload: Buffer): Message {
  const cmd = Cmd.REMOTE_IO_REQ;
  if (payload.length < FIXED.ioReq) throw new ProtocolError(`truncated REMOTE_IO_REQ (${payload.length} bytes)`);
  const r = P.ioReq.parse(payload) as any;
  const bytes = ioBytes(r.sizeSectors, 'REMOTE_IO_REQ');
  if (r.isRead > 1) throw new ProtocolError(`REMOTE_IO_REQ: is_read ${r.isRead} not 0 or 1`);
  exact(payload, FIXED.ioReq + (r.isRead ? 0 : bytes), 'REMOTE_IO_REQ');
  return {
    cmd,
    reqId: r.reqId,
    sizeSectors: r.sizeSectors,
    volumeId: num(r.volumeId, 'volume_id'),
    offsetSectors: num(r.offsetSectors, 'offset_sectors'),
    isRead: r.isRead === 1,
    data: payload.subarray(FIXED.ioReq),
  };
}

function decodeRemoteIoRes(payload: Buffer): Message {
  const cmd = Cmd.REMOTE_IO_RES;
  if (payload.length < FIXED.ioRes) throw new ProtocolError(`truncated REMOTE_IO_RES (${payload.length} bytes)`);
  const r = P.ioRes.parse(payload) as any;
  if (payload.length - FIXED.ioRes > Limits.maxIoBytes || (payload.length - FIXED.ioRes) % SECTOR !== 0) {
    throw new ProtocolError(
      `REMOTE_IO_RES: data length ${payload.length - FIXED.ioRes} not a sector multiple within limits`,
    );
  }
  return {
    cmd,
    reqId: r.reqId,
    ioStatus: r.ioStatus,
    volumeId: num(r.volumeId, 'volume_id'),
    data: payload.subarray(FIXED.ioRes),
  };
}

function decodeAgentShutdown(payload: Buffer): Message {
  const cmd = Cmd.AGENT_SHUTDOWN;
  exact(payload, 0, 'AGENT_SHUTDOWN');
  return { cmd };
}

function decodeWriteAck(payload: Buffer): Message {
  const cmd = Cmd.WRITE_ACK;
  exact(payload, 8, 'WRITE_ACK');
  return { cmd, seq: num(payload.readBigUInt64LE(0), 'seq') };
}

function decodeWriteApplied(payload: Buffer): Message {
  const cmd = Cmd.WRITE_APPLIED;
  exact(payload, 8, 'WRITE_APPLIED');
  return { cmd, seq: num(payload.readBigUInt64LE(0), 'seq') };
}

function decodeDirtyReport(payload: Buffer): Message {
  const cmd = Cmd.DIRTY_REPORT;
  if (payload.length >= 20 && payload.readUInt32LE(16) > Limits.maxExtents) {
    throw new ProtocolError(`DIRTY_REPORT: ${payload.readUInt32LE(16)} extents exceeds ${Limits.maxExtents}`);
  }
  const r = parse(P.dirty, payload, 'DIRTY_REPORT');
  exact(payload, 20 + 16 * r.count, 'DIRTY_REPORT');
  const extents: Extent[] = r.extents.map((e: any) => ({
    offsetSectors: num(e.offsetSectors, 'offset_sectors'),
    sizeSectors: num(e.sizeSectors, 'size_sectors'),
  }));
  return { cmd, volumeId: num(r.volumeId, 'volume_id'), reportId: r.reportId, flags: r.flags, extents };
}

function decodeVolumeSize(payload: Buffer): Message {
  exact(payload, 16, 'VOLUME_SIZE');
  const r = P.volumeSize.parse(payload) as any;
  return { cmd: Cmd.VOLUME_SIZE, volumeId: num(r.volumeId, 'volume_id'), sizeBytes: num(r.sizeBytes, 'size_bytes') };
}

function decodeDirtyReportAck(payload: Buffer): Message {
  const cmd = Cmd.DIRTY_REPORT_ACK;
  exact(payload, 12, 'DIRTY_REPORT_ACK');
  const r = P.dirtyAck.parse(payload) as any;
  return { cmd, volumeId: num(r.volumeId, 'volume_id'), reportId: r.reportId };
}

function decodeChecksumReq(payload: Buffer): Message {
  const cmd = Cmd.CHECKSUM_REQ;
  exact(payload, 28, 'CHECKSUM_REQ');
  const r = P.csumReq.parse(payload) as any;
  ioBytes(r.regionSectors, 'CHECKSUM_REQ region');
  if (r.count === 0 || r.count > Limits.maxChecksumRegions)
    throw new ProtocolError(`CHECKSUM_REQ: count ${r.count} out of 1..${Limits.maxChecksumRegions}`);
  return {
    cmd,
    reqId: r.reqId,
    regionSectors: r.regionSectors,
    volumeId: num(r.volumeId, 'volume_id'),
    offsetSectors: num(r.offsetSectors, 'offset_sectors'),
    count: r.count,
  };
}

function decodeChecksumRes(payload: Buffer): Message {
  const cmd = Cmd.CHECKSUM_RES;
  if (payload.length < FIXED.csumRes) throw new ProtocolError(`truncated CHECKSUM_RES (${payload.length} bytes)`);
  const r = P.csumRes.parse(payload) as any;
  if (r.count > Limits.maxChecksumRegions)
    throw new ProtocolError(`CHECKSUM_RES: count ${r.count} exceeds ${Limits.maxChecksumRegions}`);
  exact(payload, FIXED.csumRes + (r.ioStatus === IO_OK ? r.count * CHECKSUM_BYTES : 0), 'CHECKSUM_RES');
  return {
    cmd,
    reqId: r.reqId,
    ioStatus: r.ioStatus,
    volumeId: num(r.volumeId, 'volume_id'),
    digests: payload.subarray(FIXED.csumRes),
  };
}

function decodeFlush(payload: Buffer): Message {
  const cmd = Cmd.FLUSH;
  exact(payload, 8, 'FLUSH');
  return { cmd, checkpointId: num(payload.readBigUInt64LE(0), 'checkpoint_id') };
}

function decodePoint(payload: Buffer): Message {
  exact(payload, 8, 'POINT');
  return { cmd: Cmd.POINT, checkpointId: num(payload.readBigUInt64LE(0), 'checkpoint_id') };
}

function decodeError(payload: Buffer): Message {
  const cmd = Cmd.ERROR;
  const r = parse(P.error, payload, 'ERROR');
  exact(payload, 6 + r.msgLen, 'ERROR');
  return { cmd, code: r.code, message: lenient.decode(r.message) };
}

function decodeNonce(cmd: Cmd.PING | Cmd.PONG, payload: Buffer): Message {
  exact(payload, 8, cmd === Cmd.PING ? 'PING' : 'PONG');
  return { cmd, nonce: num(payload.readBigUInt64LE(0), 'nonce') };
}
