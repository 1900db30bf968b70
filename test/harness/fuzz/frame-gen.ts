// Generators of agent->hub frames for the fuzzer: valid ones for the model's current state,
// frames in the wrong direction, and raw headers. Hostile items (mutations and malformed frames)
// are in hostile-frames.ts. Everything derives from the worker's seeded Rng.
import {
  Cmd,
  ALL_CAPS,
  Cap,
  Limits,
  MAGIC,
  HEADER_SIZE,
  SECTOR,
  IO_OK,
  DIRTY_FINAL,
  CHECKSUM_BYTES,
  encodeHello,
  encodeReportVmVolumes,
  encodeProtectedWriteHead,
  encodeStartProtect,
  encodeRemoteIoReqHead,
  encodeRemoteIoResHead,
  encodeAgentShutdown,
  encodeWriteAck,
  encodeFlush,
  encodePing,
  encodePong,
  encodeDirtyReport,
  encodeDirtyReportAck,
  encodeChecksumReq,
  encodeChecksumRes,
  encodeError,
} from '../../../protocol';
import type { Rng } from '../prng';
import type { HubModel, FuzzCtx } from './hub-model';

export function header(cmd: number, len: number, magic = MAGIC, flags = 0): Buffer {
  const b = Buffer.allocUnsafe(HEADER_SIZE);
  b.writeUInt32LE(magic >>> 0, 0);
  b.writeUInt16LE(cmd & 0xffff, 4);
  b.writeUInt16LE(flags & 0xffff, 6);
  b.writeUInt32LE(len >>> 0, 8);
  return b;
}

export const rawFrame = (cmd: number, payload: Buffer): Buffer => Buffer.concat([header(cmd, payload.length), payload]);

export const U53 = Number.MAX_SAFE_INTEGER;
const CHARS = [
  'a',
  'Z',
  '0',
  '-',
  '_',
  '.',
  ' ',
  'é',
  'ß',
  '中',
  '文',
  '😀',
  '\u200b',
  '\ufeff',
  'Ω',
  '\u0001',
  '/',
  '\\',
];

export class FrameGen {
  constructor(
    readonly rng: Rng,
    readonly ctx: FuzzCtx,
  ) {}

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
    if (bytes <= pool.length) {
      const o = this.rng.int(pool.length - bytes + 1);
      return pool.subarray(o, o + bytes);
    }
    return Buffer.alloc(bytes, 0x5a);
  }

  hello(): Buffer {
    const r = this.rng;
    const version = r.chance(0.85) ? 1 : r.pick([0, 2, 7, 0xffff]);
    // Mostly without FRAME_CRC: this generator does not seal, so an agreed FRAME_CRC ends the stream at once.
    let caps = r.chance(0.5) ? ALL_CAPS : r.chance(0.5) ? r.u32() : r.int(32);
    if (r.chance(0.95)) caps &= ~Cap.FRAME_CRC;
    const maxPayload = r.chance(0.8) ? Limits.maxPayload : r.u32();
    return encodeHello(version, caps, maxPayload, r.chance(0.1) ? '' : this.name(60, 'fz-'));
  }

  ping(): Buffer {
    return encodePing(this.rng.int(U53 + 1));
  }

  /** A frame the hub accepts in the model's current state (seed + extension commands, agent->hub). */
  valid(m: HubModel): Buffer {
    const r = this.rng;
    // Commands the agent may send now: after AGENT_SHUTDOWN only the heartbeat and ERROR, and
    // extension commands only with their capability (a CHECKSUM_RES is never solicited here).
    const owner = m.owned.size > 0 && !m.shutDown,
      open = !m.shutDown;
    const k = r.weighted({
      ping: 30,
      pong: 6,
      flush: open && m.caps & Cap.FLUSH ? 8 : 0,
      csum: open ? 0.3 : 0,
      error: 1.5,
      report: open ? 2 : 0,
      shutdown: !open ? 0 : owner ? 0.3 : 1,
      write: owner ? 30 : 0,
      writeFail: owner ? 3 : 0,
      dirty: owner && m.caps & Cap.DIRTY_REPORT ? 6 : 0,
      iores: owner && m.reads.size > 0 ? 12 : 0,
    });
    switch (k) {
      case 'ping':
        return this.ping();
      case 'pong':
        return encodePong(r.int(U53 + 1));
      case 'flush':
        return encodeFlush(r.int(U53 + 1));
      case 'csum': {
        const ok = r.chance(0.7);
        return encodeChecksumRes(
          r.u32(),
          ok ? IO_OK : -r.between(1, 125),
          r.int(1000),
          ok ? this.data(CHECKSUM_BYTES * r.int(5)) : Buffer.alloc(0),
        );
      }
      case 'error':
        return encodeError(r.between(1, 9), r.chance(0.5) ? this.name(80) : '');
      case 'report': {
        const vols = Array.from({ length: r.int(3) }, () => ({
          name: this.name(30, 'unk-'),
          sizeBytes: SECTOR * r.between(1, 1 << 20),
        }));
        return encodeReportVmVolumes(vols);
      }
      case 'shutdown':
        return encodeAgentShutdown();
      case 'write':
      case 'writeFail': {
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
      case 0:
        return encodeStartProtect(r.int(1000), this.name(20));
      case 1: {
        const read = r.chance(0.6),
          size = r.between(1, 64);
        const h = encodeRemoteIoReqHead(r.u32(), size, r.int(1000), r.int(1 << 20), read);
        return read ? h : Buffer.concat([h, this.data(size * SECTOR)]);
      }
      case 2:
        return encodeWriteAck(r.int(U53 + 1));
      case 3:
        return encodeDirtyReportAck(r.int(1000), r.u32());
      default:
        return encodeChecksumReq(
          r.u32(),
          r.between(1, 65536),
          r.int(1000),
          r.int(1 << 20),
          r.between(1, Limits.maxChecksumRegions),
        );
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
      const id = r.pick([
        this.ctx.goodVolumeId,
        0,
        U53,
        r.int(1000),
        r.int(U53 + 1),
        Math.max(0, ...m.owned.keys()) + 1,
      ]);
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
}

/** Twelve 0xFF bytes complete any partial header into a fatal one (bad magic, cmd, flags or length). */
export const KILL_HEADER = Buffer.alloc(HEADER_SIZE, 0xff);
