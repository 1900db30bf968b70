// NBD wire format (fixed newstyle handshake, simple replies), per NetworkBlockDevice/nbd
// doc/proto.md. Pure encoders and parsers; the server in src/agent owns the sockets.

export const NBDMAGIC = 0x4e42444d41474943n;
export const IHAVEOPT = 0x49484156454f5054n;
export const OPT_REPLY_MAGIC = 0x3e889045565a9n;
export const REQUEST_MAGIC = 0x25609513;
export const SIMPLE_REPLY_MAGIC = 0x67446698;

export const HS_FIXED_NEWSTYLE = 1,
  HS_NO_ZEROES = 2;
export const CF_FIXED_NEWSTYLE = 1,
  CF_NO_ZEROES = 2;

export enum Opt {
  EXPORT_NAME = 1,
  ABORT = 2,
  LIST = 3,
  STARTTLS = 5,
  INFO = 6,
  GO = 7,
  STRUCTURED_REPLY = 8,
  LIST_META_CONTEXT = 9,
  SET_META_CONTEXT = 10,
  EXTENDED_HEADERS = 11,
}
export enum Rep {
  ACK = 1,
  SERVER = 2,
  INFO = 3,
}
export const REP_ERR_UNSUP = 0x80000001,
  REP_ERR_POLICY = 0x80000002,
  REP_ERR_INVALID = 0x80000003,
  REP_ERR_UNKNOWN = 0x80000006,
  REP_ERR_TLS_REQD = 0x80000005,
  REP_ERR_TOO_BIG = 0x8000000a;
export enum Info {
  EXPORT = 0,
  NAME = 1,
  DESCRIPTION = 2,
  BLOCK_SIZE = 3,
}

export enum NbdCmd {
  READ = 0,
  WRITE = 1,
  DISC = 2,
  FLUSH = 3,
  TRIM = 4,
  CACHE = 5,
  WRITE_ZEROES = 6,
  BLOCK_STATUS = 7,
}
export const CMD_FLAG_FUA = 1,
  CMD_FLAG_NO_HOLE = 2;
export const TF = {
  HAS_FLAGS: 1,
  READ_ONLY: 2,
  SEND_FLUSH: 4,
  SEND_FUA: 8,
  SEND_TRIM: 32,
  SEND_WRITE_ZEROES: 64,
  CAN_MULTI_CONN: 256,
  SEND_CACHE: 1024,
} as const;

export const NbdErr = {
  EPERM: 1,
  EIO: 5,
  ENOMEM: 12,
  EINVAL: 22,
  ENOSPC: 28,
  EOVERFLOW: 75,
  ENOTSUP: 95,
  ESHUTDOWN: 108,
} as const;

export const MAX_OPTION_LEN = 64 * 1024; // longest option payload we accept
export const MAX_REQUEST = 32 * 1024 * 1024; // largest READ/WRITE payload (advertised max block size)
export const REQUEST_HEADER = 28;

export function serverGreeting(): Buffer {
  const b = Buffer.alloc(18);
  b.writeBigUInt64BE(NBDMAGIC, 0);
  b.writeBigUInt64BE(IHAVEOPT, 8);
  b.writeUInt16BE(HS_FIXED_NEWSTYLE | HS_NO_ZEROES, 16);
  return b;
}

export function optReply(opt: number, type: number, data: Buffer = Buffer.alloc(0)): Buffer {
  const b = Buffer.alloc(20 + data.length);
  b.writeBigUInt64BE(OPT_REPLY_MAGIC, 0);
  b.writeUInt32BE(opt, 8);
  b.writeUInt32BE(type >>> 0, 12);
  b.writeUInt32BE(data.length, 16);
  data.copy(b, 20);
  return b;
}

export function infoExport(size: number, flags: number): Buffer {
  const b = Buffer.alloc(12);
  b.writeUInt16BE(Info.EXPORT, 0);
  b.writeBigUInt64BE(BigInt(size), 2);
  b.writeUInt16BE(flags, 10);
  return b;
}

export function infoBlockSize(min: number, pref: number, max: number): Buffer {
  const b = Buffer.alloc(14);
  b.writeUInt16BE(Info.BLOCK_SIZE, 0);
  b.writeUInt32BE(min, 2);
  b.writeUInt32BE(pref, 6);
  b.writeUInt32BE(max, 10);
  return b;
}

export function infoName(name: string): Buffer {
  const n = Buffer.from(name, 'utf8');
  const b = Buffer.alloc(2 + n.length);
  b.writeUInt16BE(Info.NAME, 0);
  n.copy(b, 2);
  return b;
}

/** Reply to NBD_OPT_EXPORT_NAME: size, flags, and no zero padding when the client set NO_ZEROES. */
export function exportNameReply(size: number, flags: number, noZeroes: boolean): Buffer {
  const b = Buffer.alloc(10 + (noZeroes ? 0 : 124));
  b.writeBigUInt64BE(BigInt(size), 0);
  b.writeUInt16BE(flags, 8);
  return b;
}

export const SIMPLE_REPLY = 16; // bytes of a simple reply

/** A simple reply at `o` of `b`; the handle as the request carried it, two big-endian halves. */
export function writeSimpleReply(b: Buffer, o: number, error: number, handleHi: number, handleLo: number): void {
  b.writeUInt32BE(SIMPLE_REPLY_MAGIC, o);
  b.writeUInt32BE(error, o + 4);
  b.writeUInt32BE(handleHi, o + 8);
  b.writeUInt32BE(handleLo, o + 12);
}

export function simpleReply(error: number, handleHi: number, handleLo: number): Buffer {
  const b = Buffer.allocUnsafe(SIMPLE_REPLY);
  writeSimpleReply(b, 0, error, handleHi, handleLo);
  return b;
}

/**
 * A request header. The handle is opaque to the server: kept as its two 32-bit halves so that
 * parsing a request allocates nothing but this object (no Buffer, no BigInt).
 */
export interface NbdRequest {
  flags: number;
  type: number;
  handleHi: number;
  handleLo: number;
  offset: number;
  length: number;
}

const OFFSET_HI_LIMIT = 0x200000; // offsets from 2^53 up are past any export: clamped to MAX_SAFE_INTEGER

/** Parse a 28-byte request header at `o`. Throws on a bad magic. */
export function parseRequest(b: Buffer, o: number): NbdRequest {
  const magic = b.readUInt32BE(o);
  if (magic !== REQUEST_MAGIC) throw new Error(`bad NBD request magic 0x${magic.toString(16)}`);
  const hi = b.readUInt32BE(o + 16);
  return {
    flags: b.readUInt16BE(o + 4),
    type: b.readUInt16BE(o + 6),
    handleHi: b.readUInt32BE(o + 8),
    handleLo: b.readUInt32BE(o + 12),
    offset: hi >= OFFSET_HI_LIMIT ? Number.MAX_SAFE_INTEGER : hi * 0x100000000 + b.readUInt32BE(o + 20),
    length: b.readUInt32BE(o + 24),
  };
}

/** NBD_OPT_GO / NBD_OPT_INFO payload: name and the info types the client asks for. */
export function parseGo(data: Buffer): { name: string; infos: number[] } | null {
  if (data.length < 6) return null;
  const n = data.readUInt32BE(0);
  if (4 + n + 2 > data.length) return null;
  const name = data.toString('utf8', 4, 4 + n);
  const count = data.readUInt16BE(4 + n);
  if (4 + n + 2 + 2 * count !== data.length) return null;
  const infos: number[] = [];
  for (let i = 0; i < count; i++) infos.push(data.readUInt16BE(4 + n + 2 + 2 * i));
  return { name, infos };
}
