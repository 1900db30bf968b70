// Hostile agent->hub items for the fuzzer: mutations of valid frames (bit flips, truncation,
// length, command, flag, magic and field edits) and malformed frames of every kind the hub must
// refuse, or, for a mutation that still decodes, accept. The model (hub-model.ts) decides which.
import {
  Cmd,
  ALL_CAPS,
  Limits,
  MAGIC,
  HEADER_SIZE,
  SECTOR,
  IO_OK,
  DIRTY_FINAL,
  encodeReportVmVolumes,
  encodeProtectedWriteHead,
  encodeRemoteIoResHead,
  encodeAgentShutdown,
  encodeFlush,
  encodeDirtyReport,
  encodeError,
} from '../../../protocol';
import type { HubModel } from './hub-model';
import { FrameGen, header, rawFrame, U53 } from './frame-gen';

const INTERESTING = [0, 1, 0x7f, 0x80, 0xff, 0x7fff, 0x8000, 0xffff, 0x10000, 0x7fffffff, 0x80000000, 0xffffffff];
const INTERESTING_U64 = [
  0n,
  1n,
  0xffffffffn,
  0x100000000n,
  BigInt(U53),
  BigInt(U53) + 1n,
  0x7fffffffffffffffn,
  0xffffffffffffffffn,
];

/** Bit flips, byte stores, truncation, extension, length/cmd/flags/magic edits, field stores. */
export function mutate(g: FrameGen, f: Buffer): Buffer {
  const r = g.rng;
  const b = Buffer.from(f);
  switch (
    r.weighted({
      flip: 25,
      store: 12,
      truncate: 14,
      extend: 10,
      lenHuge: 8,
      lenDelta: 10,
      cmd: 8,
      flags: 3,
      magic: 3,
      field: 12,
    })
  ) {
    case 'flip': {
      const n = r.between(1, 8);
      for (let i = 0; i < n; i++) {
        const at = r.chance(0.4) ? r.int(Math.min(b.length, HEADER_SIZE)) : r.int(b.length);
        b[at] ^= 1 << r.int(8);
      }
      return b;
    }
    case 'store': {
      const n = r.between(1, 4);
      for (let i = 0; i < n; i++) b[r.int(b.length)] = r.pick([0, 0xff, 0x7f, 0x80, r.u32() & 0xff]);
      return b;
    }
    case 'truncate':
      return b.subarray(0, Math.max(1, r.int(b.length)));
    case 'extend':
      return Buffer.concat([b, r.chance(0.3) ? Buffer.alloc(r.between(1, 64)) : r.bytes(r.between(1, 64))]);
    case 'lenHuge':
      b.writeUInt32LE(
        r.pick([
          0xffffffff,
          Limits.maxPayload + 1,
          Limits.maxPayload,
          Limits.maxPayload - 1,
          0x7fffffff,
          r.u32(),
          r.between(1 << 20, Limits.maxPayload),
        ]) >>> 0,
        8,
      );
      return b;
    case 'lenDelta':
      b.writeUInt32LE(Math.max(0, b.readUInt32LE(8) + r.pick([-16, -8, -4, -2, -1, 1, 2, 4, 8, 16, 512])) >>> 0, 8);
      return b;
    case 'cmd':
      b.writeUInt16LE(r.pick([0, r.between(8, 15), r.between(25, 0xffff), r.between(1, 24), 0xffff]), 4);
      return b;
    case 'flags':
      b.writeUInt16LE(r.between(1, 0xffff), 6);
      return b;
    case 'magic':
      b.writeUInt32LE(r.chance(0.5) ? 0x52504842 : r.u32(), 0);
      return b;
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
export function hostileFrame(g: FrameGen, m: HubModel, budget: { bigBytes: number }): Buffer {
  const r = g.rng;
  const owner = m.owned.size > 0;
  const k = r.weighted({
    random: 14,
    mutate: 36,
    header: 10,
    wrongDir: 8,
    hello2: 4,
    pwUnknown: 6,
    pwRange: owner ? 8 : 0,
    pwSize: 4,
    ioUnknown: 5,
    ioBad: owner && m.reads.size > 0 ? 5 : 0,
    dirtyCount: 3,
    dirtyUnknown: 3,
    dirtyRange: owner ? 4 : 0,
    u64: 3,
    utf8: 2,
    trailing: 3,
    dirtyBig: budget.bigBytes > 0 ? 0.15 : 0,
  });
  switch (k) {
    case 'mutate':
      return mutate(g, g.anyFrame(m));
    case 'wrongDir':
      return g.wrongDirection();
    case 'hello2':
      return g.hello();
    case 'random':
    case 'header':
    case 'u64':
    case 'utf8':
    case 'trailing':
      return malformed(g, k);
    case 'pwUnknown':
    case 'pwRange':
    case 'pwSize':
      return badWrite(g, m, k);
    case 'ioUnknown':
    case 'ioBad':
      return badRemoteIo(g, m, k);
    case 'dirtyCount':
    case 'dirtyUnknown':
    case 'dirtyRange':
    case 'dirtyBig':
      return badDirtyReport(g, m, k, budget);
  }
  return r.bytes(16);
}

/** Frames broken regardless of the session: random bytes, bad headers, huge u64s, bad UTF-8, trailing bytes. */
function malformed(g: FrameGen, k: 'random' | 'header' | 'u64' | 'utf8' | 'trailing'): Buffer {
  const r = g.rng;
  switch (k) {
    case 'random': {
      const n = r.chance(0.03) ? r.between(1024, 65536) : r.between(1, 256);
      const b = r.bytes(n);
      if (r.chance(0.5) && n >= 4) b.writeUInt32LE(MAGIC, 0); // get past the magic to the other checks
      return b;
    }
    case 'header': {
      switch (r.int(4)) {
        case 0:
          return Buffer.concat([header(Cmd.PING, 8, r.chance(0.3) ? 0x52504842 : r.u32()), Buffer.alloc(8)]);
        case 1:
          return Buffer.concat([header(r.pick([0, r.between(8, 15), r.between(25, 0xffff)]), 8), Buffer.alloc(8)]);
        case 2:
          return Buffer.concat([header(Cmd.PING, 8, MAGIC, r.between(1, 0xffff)), Buffer.alloc(8)]);
        default:
          return header(
            r.pick([Cmd.PROTECTED_WRITE, Cmd.DIRTY_REPORT, Cmd.REMOTE_IO_RES, Cmd.PING]),
            r.pick([Limits.maxPayload + 1, 0xffffffff, r.between(Limits.maxPayload + 1, 0xffffffff)]),
          );
      }
    }
    case 'u64': {
      const big = r.pick([BigInt(U53) + 1n, 0xffffffffffffffffn, 1n << 60n]);
      switch (r.int(4)) {
        case 0: {
          const p = Buffer.alloc(8);
          p.writeBigUInt64LE(big);
          return rawFrame(r.pick([Cmd.PING, Cmd.PONG, Cmd.FLUSH]), p);
        }
        case 1: {
          const p = Buffer.alloc(24);
          p.writeBigUInt64LE(big, r.pick([0, 8]));
          p.writeUInt32LE(1, 16);
          p.writeInt32LE(-5, 20);
          return rawFrame(Cmd.PROTECTED_WRITE, p);
        }
        case 2: {
          const f = g.dirtyReport(r.int(1000), r.between(1, 3));
          f.writeBigUInt64LE(big, HEADER_SIZE + r.pick([0, 20, 28]));
          return f;
        }
        default: {
          const f = encodeReportVmVolumes([{ name: 'x', sizeBytes: 512 }]);
          f.writeBigUInt64LE(big, HEADER_SIZE + 4);
          return f;
        }
      }
    }
    case 'utf8': {
      const bad = r.pick([
        Buffer.from([0xc3, 0x28]),
        Buffer.from([0xff]),
        Buffer.from([0xc0, 0x80]),
        Buffer.from([0xed, 0xa0, 0x80]),
        Buffer.from([0xe2, 0x82]),
      ]);
      const nm = Buffer.concat([Buffer.from('v'), bad]);
      if (r.chance(0.5)) {
        const p = Buffer.alloc(4 + 10 + nm.length);
        p.writeUInt32LE(1, 0);
        p.writeBigUInt64LE(512n, 4);
        p.writeUInt16LE(nm.length, 12);
        nm.copy(p, 14);
        return rawFrame(Cmd.REPORT_VM_VOLUMES, p);
      }
      const p = Buffer.alloc(14 + nm.length);
      p.writeUInt16LE(1, 0);
      p.writeUInt32LE(ALL_CAPS, 4);
      p.writeUInt32LE(Limits.maxPayload, 8);
      p.writeUInt16LE(nm.length, 12);
      nm.copy(p, 14);
      return rawFrame(Cmd.HELLO, p);
    }
    case 'trailing': {
      const f = r.pick([
        g.ping(),
        encodeFlush(1),
        encodeAgentShutdown(),
        encodeReportVmVolumes([]),
        encodeError(1, 'x'),
      ]);
      const extra = r.bytes(r.between(1, 16));
      const b = Buffer.concat([f, extra]);
      b.writeUInt32LE(f.length - HEADER_SIZE + extra.length, 8);
      return b;
    }
  }
  return r.bytes(16);
}

/** PROTECTED_WRITEs for a volume not on this connection, out of its range, or with the wrong size. */
function badWrite(g: FrameGen, m: HubModel, k: 'pwUnknown' | 'pwRange' | 'pwSize'): Buffer {
  const r = g.rng;
  const owner = m.owned.size > 0;
  switch (k) {
    case 'pwUnknown': {
      const size = r.between(1, 8);
      return Buffer.concat([
        encodeProtectedWriteHead(g.unknownVolumeId(m), r.int(1 << 16), size, IO_OK),
        g.data(size * SECTOR),
      ]);
    }
    case 'pwRange': {
      const v = r.pick([...m.owned.values()]);
      const sectors = v.sizeBytes / SECTOR;
      const [off, size] = r.pick<[number, number]>([
        [sectors, 1],
        [sectors - 1, 2],
        [sectors - r.between(1, 8), 64],
        [U53, 1],
        [U53 - 1, 65536],
        [r.int(U53 + 1), r.between(1, 65536)],
        [0, Math.min(65536, sectors + 1)],
      ]);
      // Failed writes carry no data: the range check must still apply (§5.2).
      if (size > 64 || r.chance(0.3)) return encodeProtectedWriteHead(v.id, off, size, -5);
      return Buffer.concat([encodeProtectedWriteHead(v.id, off, size, IO_OK), g.data(size * SECTOR)]);
    }
    case 'pwSize': {
      const id = owner && r.chance(0.5) ? r.pick([...m.owned.keys()]) : g.unknownVolumeId(m);
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
      return rawFrame(Cmd.PROTECTED_WRITE, Buffer.concat([p, g.data(Math.max(0, dataLen))]));
    }
  }
  return r.bytes(16);
}

/** REMOTE_IO_RES for a request never made, or not matching the one made. */
function badRemoteIo(g: FrameGen, m: HubModel, k: 'ioUnknown' | 'ioBad'): Buffer {
  const r = g.rng;
  switch (k) {
    case 'ioUnknown': {
      const n = r.int(3) * SECTOR;
      return Buffer.concat([
        encodeRemoteIoResHead(0x80000000 + r.int(0x7fffffff), r.chance(0.7) ? IO_OK : -5, r.int(1000), n),
        g.data(n),
      ]);
    }
    case 'ioBad': {
      const [reqId, rd] = r.pick([...m.reads.entries()]);
      if (r.chance(0.3)) return encodeRemoteIoResHead(reqId, IO_OK, rd.volumeId + 1 + r.int(5), 0);
      const n = r.chance(0.2)
        ? rd.bytes + r.between(1, 511)
        : Math.max(0, rd.bytes + r.pick([-SECTOR, SECTOR, -rd.bytes]));
      return Buffer.concat([encodeRemoteIoResHead(reqId, IO_OK, rd.volumeId, n), g.data(n)]);
    }
  }
  return r.bytes(16);
}

/** DIRTY_REPORTs with too many extents, for an unknown volume, out of range, or ~1 MiB big. */
function badDirtyReport(
  g: FrameGen,
  m: HubModel,
  k: 'dirtyCount' | 'dirtyUnknown' | 'dirtyRange' | 'dirtyBig',
  budget: { bigBytes: number },
): Buffer {
  const r = g.rng;
  const owner = m.owned.size > 0;
  switch (k) {
    case 'dirtyCount': {
      const p = Buffer.alloc(20 + 16 * r.int(4));
      p.writeBigUInt64LE(BigInt(r.int(1000)), 0);
      p.writeUInt32LE(
        r.pick([
          Limits.maxExtents + 1,
          Limits.maxExtents + r.between(2, 1000),
          0xffffffff,
          r.between(Limits.maxExtents + 1, 0xffffffff),
        ]),
        16,
      );
      return rawFrame(Cmd.DIRTY_REPORT, p);
    }
    case 'dirtyUnknown':
      return g.dirtyReport(g.unknownVolumeId(m), r.int(8));
    case 'dirtyRange': {
      const v = r.pick([...m.owned.values()]);
      const sectors = v.sizeBytes / SECTOR;
      const ext = [
        { offsetSectors: r.int(sectors), sizeSectors: r.between(1, 8) },
        r.pick([
          { offsetSectors: sectors, sizeSectors: 1 },
          { offsetSectors: sectors - 1, sizeSectors: 2 },
          { offsetSectors: U53, sizeSectors: 1 },
          { offsetSectors: 0, sizeSectors: U53 },
        ]),
      ];
      return encodeDirtyReport(v.id, r.u32(), DIRTY_FINAL, r.chance(0.5) ? ext : ext.reverse());
    }
    case 'dirtyBig': {
      const count = r.chance(0.5) ? Limits.maxExtents + 1 : Limits.maxExtents; // 65537: refused; 65536: legal
      const target = owner && count === Limits.maxExtents && r.chance(0.5) ? r.pick([...m.owned.values()]) : null;
      const f = g.dirtyReport(
        target ? target.id : g.unknownVolumeId(m),
        count,
        DIRTY_FINAL,
        target ? target.sizeBytes : 1 << 30,
      );
      budget.bigBytes -= f.length;
      return f;
    }
  }
  return r.bytes(16);
}
