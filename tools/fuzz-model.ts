// Fuzzing support for a live hub: a seeded PRNG, a model of how the hub must treat a byte stream
// from an agent (protocol/SPEC.md §3-§6, §12 and the reference hub's checks), and generators of
// valid, mutated and hostile agent->hub frames. Pure: no sockets. Used by tools/fuzz-campaign.ts.
import { crc32 } from 'node:zlib';
import {
  FLAG_CRC, Cmd, ALL_CAPS, ErrorCode, Limits, MAGIC, HEADER_SIZE, SECTOR, IO_OK, DIRTY_FINAL, CHECKSUM_BYTES,
  decode, Message, ProtocolError,
  encodeHello, encodeReportVmVolumes, encodeProtectedWriteHead, encodeStartProtect, encodeRemoteIoReqHead,
  encodeRemoteIoResHead, encodeAgentShutdown, encodeWriteAck, encodeFlush, encodePing, encodePong,
  encodeDirtyReport, encodeDirtyReportAck, encodeChecksumReq, encodeChecksumRes, encodeError,
} from '../protocol';

// ---------------------------------------------------------------------------------------------
// PRNG: xoshiro128** seeded through splitmix32. Everything a worker sends derives from it.

const rotl = (x: number, k: number) => (x << k) | (x >>> (32 - k));

export class Rng {
  private s0: number;
  private s1: number;
  private s2: number;
  private s3: number;

  constructor(seed: number) {
    let x = ((seed >>> 0) ^ Math.floor(seed / 2 ** 32)) | 0;
    const next = () => {
      x = (x + 0x9e3779b9) | 0;
      let z = x;
      z = Math.imul(z ^ (z >>> 16), 0x85ebca6b);
      z = Math.imul(z ^ (z >>> 13), 0xc2b2ae35);
      return (z ^ (z >>> 16)) >>> 0;
    };
    this.s0 = next(); this.s1 = next(); this.s2 = next(); this.s3 = next() || 1;
  }

  u32(): number {
    const r = Math.imul(rotl(Math.imul(this.s1, 5), 7), 9) >>> 0;
    const t = this.s1 << 9;
    this.s2 ^= this.s0; this.s3 ^= this.s1; this.s1 ^= this.s2; this.s0 ^= this.s3;
    this.s2 ^= t; this.s3 = rotl(this.s3, 11);
    return r;
  }

  float(): number { return this.u32() / 4294967296; }
  /** Integer in [0, n), n up to 2^53. */
  int(n: number): number {
    if (n <= 4294967296) return Math.floor(this.float() * n);
    return Math.floor((this.u32() * 4294967296 + this.u32()) / 18446744073709551616 * n);
  }
  between(lo: number, hi: number): number { return lo + this.int(hi - lo + 1); }
  chance(p: number): boolean { return this.float() < p; }
  pick<T>(a: readonly T[]): T { return a[this.int(a.length)]; }
  weighted<K extends string>(w: Partial<Record<K, number>>): K {
    const e = Object.entries(w) as [K, number][];
    let t = 0;
    for (const [, v] of e) t += Math.max(0, v);
    let x = this.float() * t;
    for (const [k, v] of e) { if ((x -= Math.max(0, v)) < 0) return k; }
    return e[e.length - 1][0];
  }
  bytes(n: number): Buffer {
    const b = Buffer.allocUnsafe(n);
    let i = 0;
    for (; i + 4 <= n; i += 4) b.writeUInt32LE(this.u32(), i);
    for (; i < n; i++) b[i] = this.u32() & 0xff;
    return b;
  }
  fork(tag: number): Rng { return new Rng((this.u32() ^ Math.imul(tag + 1, 0x9e3779b1)) >>> 0); }
}

// ---------------------------------------------------------------------------------------------
// What the fuzzer knows about the hub it attacks.

export interface FuzzCtx {
  goodVolume: string; // the volume the good agent holds (V1): claims must be refused
  goodVolumeId: number; // its id on the good agent's connection: unknown on every other one
  goodVm: string; // never used as a HELLO name (same name = legitimate take-over, §5.3 / session.ts)
  fuzzVolumes: string[]; // recovery volumes that fuzz sessions may own (FZ1..), empty on a foreign hub
  fuzzVolumeBytes: number;
  pool: Buffer; // random data for writes and read answers (>= 1 MiB)
}

export interface OwnedVolume { id: number; name: string; sizeBytes: number }

/** The hub's answer the model predicts for a stream: its first fatal error, or none. */
export interface Expected {
  code: number;
  message?: string; // exact text (errors raised by the reference framer/decoder, or fixed hub texts)
  prefix?: string; // start of the text (errors whose text carries hub-internal numbers)
  sync: boolean; // raised while the frame is received (vs. when the queued frame is applied)
  why: string;
}

const KNOWN = new Set<number>(Object.values(Cmd).filter((v): v is number => typeof v === 'number'));
const HUB_TO_AGENT = new Set<number>([Cmd.START_PROTECT, Cmd.REMOTE_IO_REQ, Cmd.WRITE_ACK, Cmd.DIRTY_REPORT_ACK, Cmd.CHECKSUM_REQ]);

/**
 * The hub's receive path for one connection, as the spec and the reference hub define it: the
 * framer's header checks, the payload decoder, HELLO-first, direction, and the checks applied to
 * queued frames (volume ids of this connection, ranges, remote-IO request ids). Fed byte by byte,
 * like the hub, so a mutated length field shifts every later frame exactly as it does there.
 */
export class HubModel {
  private hdr = Buffer.alloc(HEADER_SIZE);
  private hdrFill = 0;
  private hcrc = -1;
  private crcSeen = false;
  private chain = 0;
  private cmd = -1;
  private need = 0;
  private body: Buffer[] = [];
  private filled = 0;
  first = true;
  hello: Extract<Message, { cmd: Cmd.HELLO }> | null = null; // valid HELLO as first frame
  caps = 0;
  error: Expected | null = null;
  /** The model cannot predict the rest (a mutated frame may have claimed a volume, ...). */
  taint: string | null = null;
  readonly owned = new Map<number, OwnedVolume>();
  readonly reads = new Map<number, { volumeId: number; bytes: number }>(); // hub reads seen, unanswered
  maxReqSeen = 0;
  claiming: string | null = null; // volume this connection is claiming on purpose
  readonly pings: number[] = []; // nonces of PINGs the hub must answer before its error
  frames = 0; // complete frames the hub will decode
  /** Bytes fed so far, and the offset just past the byte that triggers the first error. */
  pos = 0;
  errorAt = -1;
  sentDirtyReport = false;
  sentV1Report = false;

  constructor(readonly ctx: FuzzCtx) {}

  get done(): boolean { return this.error !== null || this.taint !== null; }

  /** Bytes the hub still waits for to complete the current frame, or null at a frame boundary. */
  get waiting(): { header: number } | { payload: number } | null {
    if (this.cmd < 0) return this.hdrFill > 0 ? { header: HEADER_SIZE - this.hdrFill } : null;
    return { payload: this.need - this.filled };
  }

  feed(b: Buffer): void {
    if (this.error) return;
    const base = this.pos;
    let off = 0;
    try {
      this.consume(b, base, (o) => (off = o));
    } finally {
      this.pos = base + (this.error ? Math.min(off, b.length) : b.length);
    }
  }

  private at = 0; // stream offset just past the bytes consumed so far, for errorAt

  private consume(b: Buffer, base: number, track: (off: number) => void): void {
    let off = 0;
    while (off < b.length && !this.error) {
      if (this.cmd < 0) {
        const take = Math.min(HEADER_SIZE - this.hdrFill, b.length - off);
        b.copy(this.hdr, this.hdrFill, off, off + take);
        this.hdrFill += take;
        off += take;
        track(off); this.at = base + off;
        if (this.hdrFill < HEADER_SIZE) return;
        this.hdrFill = 0;
        const magic = this.hdr.readUInt32LE(0), cmd = this.hdr.readUInt16LE(4), flags = this.hdr.readUInt16LE(6), len = this.hdr.readUInt32LE(8);
        // SPEC §3 receiver rules, in order, on the header alone.
        if (magic !== MAGIC) return this.fatal(ErrorCode.PROTOCOL, `bad magic 0x${magic.toString(16).padStart(8, '0')}`, 'header: magic');
        if (!KNOWN.has(cmd)) return this.fatal(ErrorCode.PROTOCOL, `unknown command ${cmd}`, 'header: cmd');
        if (flags & ~FLAG_CRC) return this.fatal(ErrorCode.PROTOCOL, `reserved flags 0x${flags.toString(16)} set`, 'header: flags');
        if (len > Limits.maxPayload) return this.fatal(ErrorCode.PROTOCOL, `payload ${len} bytes exceeds limit ${Limits.maxPayload}`, 'header: length');
        if (!flags && this.crcSeen) return this.fatal(ErrorCode.PROTOCOL, 'frame without checksum after checksums began', 'header: crc');
        this.cmd = cmd;
        this.need = len + (flags ? 4 : 0);
        this.hcrc = flags ? crc32(this.hdr, this.chain) : -1;
        if (this.need === 0) { this.cmd = -1; this.frame(cmd, Buffer.alloc(0)); continue; }
      }
      const take = Math.min(this.need - this.filled, b.length - off);
      this.body.push(b.subarray(off, off + take));
      this.filled += take;
      off += take;
      track(off); this.at = base + off;
      if (this.filled === this.need) {
        let p = Buffer.concat(this.body, this.need);
        const cmd = this.cmd;
        this.cmd = -1; this.need = 0; this.filled = 0; this.body = [];
        if (this.hcrc >= 0) { // FLAG_CRC frame: the hub verifies the trailer before anything else
          const body = p.subarray(0, p.length - 4);
          const c = crc32(body, this.hcrc) >>> 0;
          if (c !== p.readUInt32LE(p.length - 4)) return this.fatal(ErrorCode.PROTOCOL, 'frame checksum mismatch', 'header: crc');
          this.chain = c;
          this.crcSeen = true;
          p = body;
        }
        this.frame(cmd, p);
      }
    }
  }

  private fatal(code: number, message: string, why: string): void {
    if (this.error) return;
    this.error = { code, message, sync: true, why };
    this.errorAt = this.at;
  }

  /** An error raised when the hub applies the queued frame. Bytes after the frame must not be sent:
   *  a fatal frame behind it in the same TCP chunk would be seen first. */
  private later(code: number, text: { message?: string; prefix?: string }, why: string): void {
    if (this.error) return;
    this.error = { code, ...text, sync: false, why };
    this.errorAt = this.at;
  }

  private inRange(v: OwnedVolume, offsetSectors: number, sizeSectors: number): boolean {
    const start = offsetSectors * SECTOR, end = start + sizeSectors * SECTOR;
    return end <= v.sizeBytes && Number.isSafeInteger(end);
  }

  private frame(cmd: number, payload: Buffer): void {
    this.frames++;
    let m: Message;
    try {
      m = decode(cmd, payload);
    } catch (e) {
      const code = e instanceof ProtocolError ? e.code : ErrorCode.PROTOCOL;
      return this.fatal(code, (e as Error).message, `decode ${Cmd[cmd]}`);
    }
    if (m.cmd === Cmd.HELLO && !this.first) return this.fatal(ErrorCode.PROTOCOL, 'HELLO is only valid as the first frame', 'HELLO not first');
    if (this.first) {
      this.first = false;
      if (m.cmd === Cmd.HELLO) { this.hello = m; this.caps = m.caps & ALL_CAPS; }
    }
    if (HUB_TO_AGENT.has(m.cmd)) return this.fatal(ErrorCode.PROTOCOL, `command ${Cmd[m.cmd]} goes hub->agent, not agent->hub`, 'wrong direction');
    switch (m.cmd) {
      case Cmd.PING: this.pings.push(m.nonce); return;
      case Cmd.PROTECTED_WRITE: {
        const v = this.owned.get(m.volumeId);
        if (!v) return this.later(ErrorCode.UNKNOWN_VOLUME, { message: `PROTECTED_WRITE for unknown volume id ${m.volumeId}` }, 'write: unknown volume');
        if (!this.inRange(v, m.offsetSectors, m.sizeSectors)) {
          const start = m.offsetSectors * SECTOR, end = start + m.sizeSectors * SECTOR;
          return this.later(ErrorCode.OUT_OF_RANGE, { prefix: `PROTECTED_WRITE [${start}, ${end}) outside volume ${v.name}` }, 'write: out of range');
        }
        return;
      }
      case Cmd.REPORT_VM_VOLUMES:
        for (const v of m.volumes) {
          if (v.name === this.ctx.goodVolume) this.sentV1Report = true;
          else if (this.ctx.fuzzVolumes.includes(v.name) && v.name !== this.claiming && ![...this.owned.values()].some((o) => o.name === v.name)) {
            this.taint ??= `report names fuzz volume ${v.name}`;
          }
        }
        return;
      case Cmd.REMOTE_IO_RES: {
        const rd = this.reads.get(m.reqId);
        if (!rd) {
          // Ids the hub may have issued since the batch was built cannot be judged.
          if (this.owned.size > 0 && m.reqId <= this.maxReqSeen + 4096) { this.taint ??= `REMOTE_IO_RES for req ${m.reqId} maybe issued`; return; }
          return this.later(ErrorCode.PROTOCOL, { message: `REMOTE_IO_RES for unknown req_id ${m.reqId}` }, 'remote io: unknown req_id');
        }
        if (m.volumeId !== rd.volumeId) return this.later(ErrorCode.PROTOCOL, { message: `REMOTE_IO_RES ${m.reqId}: volume id ${m.volumeId}, request was for ${rd.volumeId}` }, 'remote io: wrong volume');
        this.reads.delete(m.reqId);
        if (m.ioStatus !== IO_OK) return;
        if (m.data.length !== rd.bytes) return this.later(ErrorCode.PROTOCOL, { message: `REMOTE_IO_RES ${m.reqId}: ${m.data.length} bytes, requested ${rd.bytes}` }, 'remote io: wrong length');
        return;
      }
      case Cmd.DIRTY_REPORT: {
        this.sentDirtyReport = true;
        const v = this.owned.get(m.volumeId);
        if (!v) return this.later(ErrorCode.UNKNOWN_VOLUME, { message: `DIRTY_REPORT for unknown volume id ${m.volumeId}` }, 'dirty report: unknown volume');
        for (const e of m.extents) {
          if (e.sizeSectors === 0) continue;
          if (!this.inRange(v, e.offsetSectors, e.sizeSectors)) {
            const start = e.offsetSectors * SECTOR, end = start + e.sizeSectors * SECTOR;
            return this.later(ErrorCode.OUT_OF_RANGE, { prefix: `DIRTY_REPORT extent [${start}, ${end}) outside volume ${v.name}` }, 'dirty report: out of range');
          }
        }
        return;
      }
      default:
        return; // HELLO, PONG, ERROR, FLUSH, AGENT_SHUTDOWN, CHECKSUM_RES: accepted
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Frame generators.

export function header(cmd: number, len: number, magic = MAGIC, flags = 0): Buffer {
  const b = Buffer.allocUnsafe(HEADER_SIZE);
  b.writeUInt32LE(magic >>> 0, 0);
  b.writeUInt16LE(cmd & 0xffff, 4);
  b.writeUInt16LE(flags & 0xffff, 6);
  b.writeUInt32LE(len >>> 0, 8);
  return b;
}

export const rawFrame = (cmd: number, payload: Buffer): Buffer => Buffer.concat([header(cmd, payload.length), payload]);

const U53 = Number.MAX_SAFE_INTEGER;
const INTERESTING = [0, 1, 0x7f, 0x80, 0xff, 0x7fff, 0x8000, 0xffff, 0x10000, 0x7fffffff, 0x80000000, 0xffffffff];
const INTERESTING_U64 = [0n, 1n, 0xffffffffn, 0x100000000n, BigInt(U53), BigInt(U53) + 1n, 0x7fffffffffffffffn, 0xffffffffffffffffn];
const CHARS = ['a', 'Z', '0', '-', '_', '.', ' ', 'é', 'ß', '中', '文', '😀', '\u200b', '\ufeff', 'Ω', '\u0001', '/', '\\'];

export class FrameGen {
  constructor(readonly rng: Rng, readonly ctx: FuzzCtx) {}

  /** A valid UTF-8 name of 1..max bytes (never the good agent's VM name). */
  name(max = 40, prefix = ''): string {
    const r = this.rng;
    let s = prefix;
    const n = r.between(1, Math.max(1, max));
    while (Buffer.byteLength(s) < n) {
      const c = r.chance(0.7) ? String.fromCharCode(r.between(0x61, 0x7a)) : r.pick(CHARS);
      if (Buffer.byteLength(s + c) > Math.min(n, Limits.maxNameBytes)) break;
      s += c;
    }
    if (s === '' || s === this.ctx.goodVm) s = `n${r.u32()}`;
    return s;
  }

  data(bytes: number): Buffer {
    const pool = this.ctx.pool;
    if (bytes <= pool.length) { const o = this.rng.int(pool.length - bytes + 1); return pool.subarray(o, o + bytes); }
    return Buffer.alloc(bytes, 0x5a);
  }

  hello(): Buffer {
    const r = this.rng;
    const version = r.chance(0.85) ? 1 : r.pick([0, 2, 7, 0xffff]);
    const caps = r.chance(0.5) ? ALL_CAPS : r.chance(0.5) ? r.u32() : r.int(32);
    const maxPayload = r.chance(0.8) ? Limits.maxPayload : r.u32();
    return encodeHello(version, caps, maxPayload, r.chance(0.1) ? '' : this.name(60, 'fz-'));
  }

  ping(): Buffer { return encodePing(this.rng.int(U53 + 1)); }

  /** A frame the hub accepts in the model's current state (seed + extension commands, agent->hub). */
  valid(m: HubModel): Buffer {
    const r = this.rng;
    const owner = m.owned.size > 0;
    const k = r.weighted({
      ping: 30, pong: 6, flush: 8, csum: 4, error: 1.5, report: 2, shutdown: owner ? 0.3 : 1,
      write: owner ? 30 : 0, writeFail: owner ? 3 : 0, dirty: owner ? 6 : 0, iores: owner && m.reads.size > 0 ? 12 : 0,
    });
    switch (k) {
      case 'ping': return this.ping();
      case 'pong': return encodePong(r.int(U53 + 1));
      case 'flush': return encodeFlush(r.int(U53 + 1));
      case 'csum': {
        const ok = r.chance(0.7);
        return encodeChecksumRes(r.u32(), ok ? IO_OK : -r.between(1, 125), r.int(1000), ok ? this.data(CHECKSUM_BYTES * r.int(5)) : Buffer.alloc(0));
      }
      case 'error': return encodeError(r.between(1, 9), r.chance(0.5) ? this.name(80) : '');
      case 'report': {
        const vols = Array.from({ length: r.int(3) }, () => ({ name: this.name(30, 'unk-'), sizeBytes: SECTOR * r.between(1, 1 << 20) }));
        return encodeReportVmVolumes(vols);
      }
      case 'shutdown': return encodeAgentShutdown();
      case 'write': case 'writeFail': {
        const v = r.pick([...m.owned.values()]);
        const sectors = v.sizeBytes / SECTOR;
        const size = r.chance(0.8) ? r.between(1, 16) : r.between(1, Math.min(256, sectors));
        const off = r.int(sectors - size + 1);
        if (k === 'writeFail') return encodeProtectedWriteHead(v.id, off, size, -r.between(1, 125));
        return Buffer.concat([encodeProtectedWriteHead(v.id, off, size, IO_OK), this.data(size * SECTOR)]);
      }
      case 'dirty': {
        const v = r.pick([...m.owned.values()]);
        const sectors = v.sizeBytes / SECTOR;
        const ext = Array.from({ length: r.int(6) }, () => {
          const size = r.chance(0.1) ? 0 : r.between(1, Math.min(4096, sectors));
          return { offsetSectors: r.int(sectors - size + 1), sizeSectors: size };
        });
        return encodeDirtyReport(v.id, r.u32(), r.chance(0.7) ? DIRTY_FINAL : r.chance(0.5) ? 0 : r.u32(), ext);
      }
      case 'iores': {
        const [reqId, rd] = r.pick([...m.reads.entries()]);
        if (r.chance(0.15)) return encodeRemoteIoResHead(reqId, -r.between(1, 125), rd.volumeId, 0);
        return Buffer.concat([encodeRemoteIoResHead(reqId, IO_OK, rd.volumeId, rd.bytes), this.data(rd.bytes)]);
      }
    }
    return this.ping();
  }

  /** A frame that is valid on the wire but travels hub->agent: the hub must refuse it. */
  wrongDirection(): Buffer {
    const r = this.rng;
    switch (r.int(5)) {
      case 0: return encodeStartProtect(r.int(1000), this.name(20));
      case 1: {
        const read = r.chance(0.6), size = r.between(1, 64);
        const h = encodeRemoteIoReqHead(r.u32(), size, r.int(1000), r.int(1 << 20), read);
        return read ? h : Buffer.concat([h, this.data(size * SECTOR)]);
      }
      case 2: return encodeWriteAck(r.int(U53 + 1));
      case 3: return encodeDirtyReportAck(r.int(1000), r.u32());
      default: return encodeChecksumReq(r.u32(), r.between(1, 65536), r.int(1000), r.int(1 << 20), r.between(1, Limits.maxChecksumRegions));
    }
  }

  /** Some frame of any kind, for mutation. */
  anyFrame(m: HubModel): Buffer {
    const r = this.rng;
    const k = r.int(10);
    if (k < 6) return this.valid(m);
    if (k < 8) return this.wrongDirection();
    if (k < 9) return this.hello();
    return this.dirtyReport(this.unknownVolumeId(m), r.int(8), 1);
  }

  unknownVolumeId(m: HubModel): number {
    const r = this.rng;
    for (;;) {
      const id = r.pick([this.ctx.goodVolumeId, 0, U53, r.int(1000), r.int(U53 + 1), Math.max(0, ...m.owned.keys()) + 1]);
      if (!m.owned.has(id)) return id;
    }
  }

  dirtyReport(volumeId: number, count: number, flags = DIRTY_FINAL, sizeBytes = 1 << 30): Buffer {
    const r = this.rng;
    const p = Buffer.allocUnsafe(20 + 16 * count);
    p.writeBigUInt64LE(BigInt(volumeId), 0);
    p.writeUInt32LE(r.u32(), 8);
    p.writeUInt32LE(flags >>> 0, 12);
    p.writeUInt32LE(count, 16);
    const sectors = Math.max(1, sizeBytes / SECTOR);
    for (let i = 0; i < count; i++) {
      const size = r.between(1, Math.min(64, sectors));
      p.writeBigUInt64LE(BigInt(r.int(sectors - size + 1)), 20 + 16 * i);
      p.writeBigUInt64LE(BigInt(size), 28 + 16 * i);
    }
    return rawFrame(Cmd.DIRTY_REPORT, p);
  }

  /** Bit flips, byte stores, truncation, extension, length/cmd/flags/magic edits, field stores. */
  mutate(f: Buffer): Buffer {
    const r = this.rng;
    const b = Buffer.from(f);
    switch (r.weighted({ flip: 25, store: 12, truncate: 14, extend: 10, lenHuge: 8, lenDelta: 10, cmd: 8, flags: 3, magic: 3, field: 12 })) {
      case 'flip': {
        const n = r.between(1, 8);
        for (let i = 0; i < n; i++) {
          const at = r.chance(0.4) ? r.int(Math.min(b.length, HEADER_SIZE)) : r.int(b.length);
          b[at] ^= 1 << r.int(8);
        }
        return b;
      }
      case 'store': { const n = r.between(1, 4); for (let i = 0; i < n; i++) b[r.int(b.length)] = r.pick([0, 0xff, 0x7f, 0x80, r.u32() & 0xff]); return b; }
      case 'truncate': return b.subarray(0, Math.max(1, r.int(b.length)));
      case 'extend': return Buffer.concat([b, r.chance(0.3) ? Buffer.alloc(r.between(1, 64)) : r.bytes(r.between(1, 64))]);
      case 'lenHuge': b.writeUInt32LE(r.pick([0xffffffff, Limits.maxPayload + 1, Limits.maxPayload, Limits.maxPayload - 1, 0x7fffffff, r.u32(), r.between(1 << 20, Limits.maxPayload)]) >>> 0, 8); return b;
      case 'lenDelta': b.writeUInt32LE(Math.max(0, b.readUInt32LE(8) + r.pick([-16, -8, -4, -2, -1, 1, 2, 4, 8, 16, 512])) >>> 0, 8); return b;
      case 'cmd': b.writeUInt16LE(r.pick([0, r.between(8, 15), r.between(25, 0xffff), r.between(1, 24), 0xffff]), 4); return b;
      case 'flags': b.writeUInt16LE(r.between(1, 0xffff), 6); return b;
      case 'magic': b.writeUInt32LE(r.chance(0.5) ? 0x52504842 : r.u32(), 0); return b;
      case 'field': {
        if (b.length <= HEADER_SIZE) return b;
        const w = r.pick([1, 2, 4, 8]);
        if (b.length - HEADER_SIZE < w) return b;
        const at = HEADER_SIZE + r.int(b.length - HEADER_SIZE - w + 1);
        if (w === 8) b.writeBigUInt64LE(r.pick(INTERESTING_U64), at);
        else if (w === 4) b.writeUInt32LE(r.pick(INTERESTING) >>> 0, at);
        else if (w === 2) b.writeUInt16LE(r.pick(INTERESTING) & 0xffff, at);
        else b[at] = r.pick(INTERESTING) & 0xff;
        return b;
      }
    }
    return b;
  }

  /**
   * One hostile item: usually fatal for the session, sometimes (a mutation that still decodes)
   * accepted; the model decides. `budget.bigBytes` limits the ~1 MiB DIRTY_REPORTs.
   */
  bad(m: HubModel, budget: { bigBytes: number }): Buffer {
    const r = this.rng;
    const owner = m.owned.size > 0;
    const k = r.weighted({
      random: 14, mutate: 36, header: 10, wrongDir: 8, hello2: 4, pwUnknown: 6, pwRange: owner ? 8 : 0, pwSize: 4,
      ioUnknown: 5, ioBad: owner && m.reads.size > 0 ? 5 : 0, dirtyCount: 3, dirtyUnknown: 3, dirtyRange: owner ? 4 : 0,
      u64: 3, utf8: 2, trailing: 3, dirtyBig: budget.bigBytes > 0 ? 0.15 : 0,
    });
    switch (k) {
      case 'random': {
        const n = r.chance(0.03) ? r.between(1024, 65536) : r.between(1, 256);
        const b = r.bytes(n);
        if (r.chance(0.5) && n >= 4) b.writeUInt32LE(MAGIC, 0); // get past the magic to the other checks
        return b;
      }
      case 'mutate': return this.mutate(this.anyFrame(m));
      case 'header': {
        switch (r.int(4)) {
          case 0: return Buffer.concat([header(Cmd.PING, 8, r.chance(0.3) ? 0x52504842 : r.u32()), Buffer.alloc(8)]);
          case 1: return Buffer.concat([header(r.pick([0, r.between(8, 15), r.between(25, 0xffff)]), 8), Buffer.alloc(8)]);
          case 2: return Buffer.concat([header(Cmd.PING, 8, MAGIC, r.between(1, 0xffff)), Buffer.alloc(8)]);
          default: return header(r.pick([Cmd.PROTECTED_WRITE, Cmd.DIRTY_REPORT, Cmd.REMOTE_IO_RES, Cmd.PING]), r.pick([Limits.maxPayload + 1, 0xffffffff, r.between(Limits.maxPayload + 1, 0xffffffff)]));
        }
      }
      case 'wrongDir': return this.wrongDirection();
      case 'hello2': return this.hello();
      case 'pwUnknown': {
        const size = r.between(1, 8);
        return Buffer.concat([encodeProtectedWriteHead(this.unknownVolumeId(m), r.int(1 << 16), size, IO_OK), this.data(size * SECTOR)]);
      }
      case 'pwRange': {
        const v = r.pick([...m.owned.values()]);
        const sectors = v.sizeBytes / SECTOR;
        const [off, size] = r.pick<[number, number]>([
          [sectors, 1], [sectors - 1, 2], [sectors - r.between(1, 8), 64], [U53, 1], [U53 - 1, 65536], [r.int(U53 + 1), r.between(1, 65536)], [0, Math.min(65536, sectors + 1)],
        ]);
        // Failed writes carry no data: the range check must still apply (§5.2).
        if (size > 64 || r.chance(0.3)) return encodeProtectedWriteHead(v.id, off, size, -5);
        return Buffer.concat([encodeProtectedWriteHead(v.id, off, size, IO_OK), this.data(size * SECTOR)]);
      }
      case 'pwSize': {
        const id = owner && r.chance(0.5) ? r.pick([...m.owned.keys()]) : this.unknownVolumeId(m);
        const p = Buffer.alloc(24);
        p.writeBigUInt64LE(BigInt(id), 0);
        p.writeBigUInt64LE(BigInt(r.int(64)), 8);
        if (r.chance(0.6)) {
          p.writeUInt32LE(r.pick([0, 65537, 0x10000 + r.between(2, 100), 0xffffffff]), 16);
          p.writeInt32LE(r.chance(0.5) ? -5 : 0, 20);
          return rawFrame(Cmd.PROTECTED_WRITE, p);
        }
        const size = r.between(1, 8);
        p.writeUInt32LE(size, 16);
        p.writeInt32LE(0, 20);
        const dataLen = size * SECTOR + r.pick([-SECTOR, -1, 1, SECTOR]);
        return rawFrame(Cmd.PROTECTED_WRITE, Buffer.concat([p, this.data(Math.max(0, dataLen))]));
      }
      case 'ioUnknown': {
        const n = r.int(3) * SECTOR;
        return Buffer.concat([encodeRemoteIoResHead(0x80000000 + r.int(0x7fffffff), r.chance(0.7) ? IO_OK : -5, r.int(1000), n), this.data(n)]);
      }
      case 'ioBad': {
        const [reqId, rd] = r.pick([...m.reads.entries()]);
        if (r.chance(0.3)) return encodeRemoteIoResHead(reqId, IO_OK, rd.volumeId + 1 + r.int(5), 0);
        const n = r.chance(0.2) ? rd.bytes + r.between(1, 511) : Math.max(0, rd.bytes + r.pick([-SECTOR, SECTOR, -rd.bytes]));
        return Buffer.concat([encodeRemoteIoResHead(reqId, IO_OK, rd.volumeId, n), this.data(n)]);
      }
      case 'dirtyCount': {
        const p = Buffer.alloc(20 + 16 * r.int(4));
        p.writeBigUInt64LE(BigInt(r.int(1000)), 0);
        p.writeUInt32LE(r.pick([Limits.maxExtents + 1, Limits.maxExtents + r.between(2, 1000), 0xffffffff, r.between(Limits.maxExtents + 1, 0xffffffff)]), 16);
        return rawFrame(Cmd.DIRTY_REPORT, p);
      }
      case 'dirtyUnknown': return this.dirtyReport(this.unknownVolumeId(m), r.int(8));
      case 'dirtyRange': {
        const v = r.pick([...m.owned.values()]);
        const sectors = v.sizeBytes / SECTOR;
        const ext = [
          { offsetSectors: r.int(sectors), sizeSectors: r.between(1, 8) },
          r.pick([{ offsetSectors: sectors, sizeSectors: 1 }, { offsetSectors: sectors - 1, sizeSectors: 2 }, { offsetSectors: U53, sizeSectors: 1 }, { offsetSectors: 0, sizeSectors: U53 }]),
        ];
        return encodeDirtyReport(v.id, r.u32(), DIRTY_FINAL, r.chance(0.5) ? ext : ext.reverse());
      }
      case 'u64': {
        const big = r.pick([BigInt(U53) + 1n, 0xffffffffffffffffn, 1n << 60n]);
        switch (r.int(4)) {
          case 0: { const p = Buffer.alloc(8); p.writeBigUInt64LE(big); return rawFrame(r.pick([Cmd.PING, Cmd.PONG, Cmd.FLUSH]), p); }
          case 1: { const p = Buffer.alloc(24); p.writeBigUInt64LE(big, r.pick([0, 8])); p.writeUInt32LE(1, 16); p.writeInt32LE(-5, 20); return rawFrame(Cmd.PROTECTED_WRITE, p); }
          case 2: { const f = this.dirtyReport(r.int(1000), r.between(1, 3)); f.writeBigUInt64LE(big, HEADER_SIZE + r.pick([0, 20, 28])); return f; }
          default: { const f = encodeReportVmVolumes([{ name: 'x', sizeBytes: 512 }]); f.writeBigUInt64LE(big, HEADER_SIZE + 4); return f; }
        }
      }
      case 'utf8': {
        const bad = r.pick([Buffer.from([0xc3, 0x28]), Buffer.from([0xff]), Buffer.from([0xc0, 0x80]), Buffer.from([0xed, 0xa0, 0x80]), Buffer.from([0xe2, 0x82])]);
        const nm = Buffer.concat([Buffer.from('v'), bad]);
        if (r.chance(0.5)) {
          const p = Buffer.alloc(4 + 10 + nm.length);
          p.writeUInt32LE(1, 0); p.writeBigUInt64LE(512n, 4); p.writeUInt16LE(nm.length, 12); nm.copy(p, 14);
          return rawFrame(Cmd.REPORT_VM_VOLUMES, p);
        }
        const p = Buffer.alloc(14 + nm.length);
        p.writeUInt16LE(1, 0); p.writeUInt32LE(ALL_CAPS, 4); p.writeUInt32LE(Limits.maxPayload, 8); p.writeUInt16LE(nm.length, 12); nm.copy(p, 14);
        return rawFrame(Cmd.HELLO, p);
      }
      case 'trailing': {
        const f = r.pick([this.ping(), encodeFlush(1), encodeAgentShutdown(), encodeReportVmVolumes([]), encodeError(1, 'x')]);
        const extra = r.bytes(r.between(1, 16));
        const b = Buffer.concat([f, extra]);
        b.writeUInt32LE(f.length - HEADER_SIZE + extra.length, 8);
        return b;
      }
      case 'dirtyBig': {
        const count = r.chance(0.5) ? Limits.maxExtents + 1 : Limits.maxExtents; // 65537: refused; 65536: legal
        const target = owner && count === Limits.maxExtents && r.chance(0.5) ? r.pick([...m.owned.values()]) : null;
        const f = this.dirtyReport(target ? target.id : this.unknownVolumeId(m), count, DIRTY_FINAL, target ? target.sizeBytes : 1 << 30);
        budget.bigBytes -= f.length;
        return f;
      }
    }
    return r.bytes(16);
  }
}

/** Twelve 0xFF bytes complete any partial header into a fatal one (bad magic, cmd, flags or length). */
export const KILL_HEADER = Buffer.alloc(HEADER_SIZE, 0xff);
