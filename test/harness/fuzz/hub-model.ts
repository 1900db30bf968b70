// What the hub must answer to a byte stream from an agent (protocol/SPEC.md §3-§6, §12 and the
// reference hub's checks): a model of its receive path, fed the same bytes the fuzzer sends.
// Pure: no sockets. The frames it judges come from frame-gen.ts and hostile-frames.ts.
import { crc32 } from 'node:zlib';
import {
  FLAG_CRC,
  Cmd,
  ALL_CAPS,
  Cap,
  MIN_MAX_PAYLOAD,
  ErrorCode,
  Limits,
  MAGIC,
  HEADER_SIZE,
  SECTOR,
  IO_OK,
  decode,
  Message,
  ProtocolError,
} from '../../../protocol';

export interface FuzzCtx {
  goodVolume: string; // the volume the good agent holds (V1): claims must be refused
  goodVolumeId: number; // its id on the good agent's connection: unknown on every other one
  goodVm: string; // never used as a HELLO name (same name = legitimate take-over, §5.3 / session.ts)
  fuzzVolumes: string[]; // recovery volumes that fuzz sessions may own (FZ1..), empty on a foreign hub
  fuzzVolumeBytes: number;
  pool: Buffer; // random data for writes and read answers (>= 1 MiB)
}

export interface OwnedVolume {
  id: number;
  name: string;
  sizeBytes: number;
}

/** The hub's answer the model predicts for a stream: its first fatal error, or none. */
export interface Expected {
  code: number;
  message?: string; // exact text (errors raised by the reference framer/decoder, or fixed hub texts)
  prefix?: string; // start of the text (errors whose text carries hub-internal numbers)
  sync: boolean; // raised while the frame is received (vs. when the queued frame is applied)
  why: string;
}

/** Agent->hub commands that need a negotiated capability (SPEC §4). */
const NEEDS = new Map<number, number>([
  [Cmd.DIRTY_REPORT, Cap.DIRTY_REPORT],
  [Cmd.FLUSH, Cap.FLUSH],
  [Cmd.CHECKSUM_RES, Cap.CHECKSUM],
  [Cmd.IDENTITY, Cap.IDENTITY],
  [Cmd.VOLUME_SIZE, Cap.RESIZE],
  [Cmd.POINT, Cap.POINT],
]);

const KNOWN = new Set<number>(Object.values(Cmd).filter((v): v is number => typeof v === 'number'));
const HUB_TO_AGENT = new Set<number>([
  Cmd.START_PROTECT,
  Cmd.STOP_PROTECT,
  Cmd.REMOTE_IO_REQ,
  Cmd.WRITE_ACK,
  Cmd.WRITE_APPLIED,
  Cmd.DIRTY_REPORT_ACK,
  Cmd.CHECKSUM_REQ,
]);

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
  // FRAME_CRC (SPEC §3.1): refused until agreed in the hub's HELLO reply, then required.
  private crcRequired = false;
  private chain = 0;
  private cmd = -1;
  private need = 0;
  private body: Buffer[] = [];
  private filled = 0;
  private at = 0; // stream offset just past the bytes consumed so far, for errorAt
  first = true;
  hello: Extract<Message, { cmd: Cmd.HELLO }> | null = null; // valid HELLO as first frame
  caps = 0;
  private identified = false; // an IDENTITY arrived
  private reportSeen = false; // a REPORT_VM_VOLUMES arrived
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
  shutDown = false; // AGENT_SHUTDOWN seen: only PING, PONG and ERROR may follow (SPEC §5.7)
  sentV1Report = false;

  constructor(readonly ctx: FuzzCtx) {}

  get done(): boolean {
    return this.error !== null || this.taint !== null;
  }

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

  private consume(b: Buffer, base: number, track: (off: number) => void): void {
    let off = 0;
    while (off < b.length && !this.error) {
      if (this.cmd < 0) {
        const take = Math.min(HEADER_SIZE - this.hdrFill, b.length - off);
        b.copy(this.hdr, this.hdrFill, off, off + take);
        this.hdrFill += take;
        off += take;
        track(off);
        this.at = base + off;
        if (this.hdrFill < HEADER_SIZE) return;
        this.hdrFill = 0;
        const magic = this.hdr.readUInt32LE(0),
          cmd = this.hdr.readUInt16LE(4),
          flags = this.hdr.readUInt16LE(6),
          len = this.hdr.readUInt32LE(8);
        // SPEC §3 receiver rules, in order, on the header alone.
        if (magic !== MAGIC)
          return this.fatal(ErrorCode.PROTOCOL, `bad magic 0x${magic.toString(16).padStart(8, '0')}`, 'header: magic');
        if (!KNOWN.has(cmd)) return this.fatal(ErrorCode.PROTOCOL, `unknown command ${cmd}`, 'header: cmd');
        if (flags & ~FLAG_CRC)
          return this.fatal(ErrorCode.PROTOCOL, `reserved flags 0x${flags.toString(16)} set`, 'header: flags');
        if (len > Limits.maxPayload)
          return this.fatal(
            ErrorCode.PROTOCOL,
            `payload ${len} bytes exceeds limit ${Limits.maxPayload}`,
            'header: length',
          );
        if (flags && !this.crcRequired)
          return this.fatal(
            ErrorCode.PROTOCOL,
            `${Cmd[cmd]} frame carries a checksum (FLAG_CRC) but FRAME_CRC was not agreed`,
            'header: crc not agreed',
          );
        if (!flags && this.crcRequired)
          return this.fatal(
            ErrorCode.PROTOCOL,
            `${Cmd[cmd]} frame without checksum (FLAG_CRC) although FRAME_CRC was agreed`,
            'header: crc missing',
          );
        this.cmd = cmd;
        this.need = len + (flags ? 4 : 0);
        this.hcrc = flags ? crc32(this.hdr, this.chain) : -1;
        if (this.need === 0) {
          this.cmd = -1;
          this.frame(cmd, Buffer.alloc(0));
          continue;
        }
      }
      const take = Math.min(this.need - this.filled, b.length - off);
      this.body.push(b.subarray(off, off + take));
      this.filled += take;
      off += take;
      track(off);
      this.at = base + off;
      if (this.filled === this.need) {
        let p = Buffer.concat(this.body, this.need);
        const cmd = this.cmd;
        this.cmd = -1;
        this.need = 0;
        this.filled = 0;
        this.body = [];
        if (this.hcrc >= 0) {
          // FLAG_CRC frame: the hub verifies the trailer before anything else
          const body = p.subarray(0, p.length - 4);
          const c = crc32(body, this.hcrc) >>> 0;
          if (c !== p.readUInt32LE(p.length - 4))
            return this.fatal(ErrorCode.PROTOCOL, 'frame checksum mismatch', 'header: crc');
          this.chain = c;
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
    const start = offsetSectors * SECTOR,
      end = start + sizeSectors * SECTOR;
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
    if (m.cmd === Cmd.HELLO && !this.first)
      return this.fatal(ErrorCode.PROTOCOL, 'HELLO is only valid as the first frame', 'HELLO not first');
    if (this.first) this.first = false;
    // SPEC §5.7 and §4: nothing but the heartbeat and ERROR after AGENT_SHUTDOWN; no extension
    // command without its capability (PING is answered even so).
    if (this.shutDown && m.cmd !== Cmd.PING && m.cmd !== Cmd.PONG && m.cmd !== Cmd.ERROR)
      return this.fatal(
        ErrorCode.PROTOCOL,
        `${Cmd[m.cmd]} after AGENT_SHUTDOWN: the agent said it was done`,
        'after shutdown',
      );
    const need = NEEDS.get(m.cmd);
    if (need !== undefined && !(this.caps & need))
      return this.fatal(
        ErrorCode.PROTOCOL,
        `${Cmd[m.cmd]} sent without its capability (negotiated caps 0x${this.caps.toString(16)})`,
        'no capability',
      );
    if (m.cmd === Cmd.AGENT_SHUTDOWN) this.shutDown = true;
    // SPEC §5.16: IDENTITY once, before any report; with IDENTITY agreed, no report before it.
    if (m.cmd === Cmd.IDENTITY && (this.identified || this.reportSeen))
      return this.fatal(
        ErrorCode.PROTOCOL,
        this.identified ? 'second IDENTITY on one connection' : 'IDENTITY after REPORT_VM_VOLUMES',
        'identity order',
      );
    if (m.cmd === Cmd.REPORT_VM_VOLUMES && this.caps & Cap.IDENTITY && !this.identified)
      return this.fatal(
        ErrorCode.PROTOCOL,
        'REPORT_VM_VOLUMES before IDENTITY, with IDENTITY negotiated',
        'identity order',
      );
    if (m.cmd === Cmd.IDENTITY) this.identified = true;
    if (m.cmd === Cmd.REPORT_VM_VOLUMES) this.reportSeen = true;
    if (m.cmd === Cmd.HELLO) {
      // SPEC §6.1, §6.3: versions start at 1; max_payload at least 4096.
      if (m.version < 1)
        return this.fatal(ErrorCode.PROTOCOL, `HELLO version ${m.version}: versions start at 1`, 'hello version');
      if (m.maxPayload < MIN_MAX_PAYLOAD)
        return this.fatal(
          ErrorCode.PROTOCOL,
          `HELLO max_payload ${m.maxPayload} is below the minimum ${MIN_MAX_PAYLOAD}`,
          'hello max_payload',
        );
      this.hello = m;
      this.caps = m.caps & ALL_CAPS;
      this.crcRequired = (this.caps & Cap.FRAME_CRC) !== 0;
    }
    if (HUB_TO_AGENT.has(m.cmd))
      return this.fatal(ErrorCode.PROTOCOL, `command ${Cmd[m.cmd]} goes hub->agent, not agent->hub`, 'wrong direction');
    switch (m.cmd) {
      case Cmd.PING:
        this.pings.push(m.nonce);
        return;
      case Cmd.PROTECTED_WRITE: {
        const v = this.owned.get(m.volumeId);
        if (!v)
          return this.later(
            ErrorCode.UNKNOWN_VOLUME,
            { message: `PROTECTED_WRITE for unknown volume id ${m.volumeId}` },
            'write: unknown volume',
          );
        if (!this.inRange(v, m.offsetSectors, m.sizeSectors)) {
          const start = m.offsetSectors * SECTOR,
            end = start + m.sizeSectors * SECTOR;
          return this.later(
            ErrorCode.OUT_OF_RANGE,
            { prefix: `PROTECTED_WRITE [${start}, ${end}) outside volume ${v.name}` },
            'write: out of range',
          );
        }
        return;
      }
      case Cmd.REPORT_VM_VOLUMES:
        for (const v of m.volumes) {
          if (v.name === this.ctx.goodVolume) this.sentV1Report = true;
          else if (
            this.ctx.fuzzVolumes.includes(v.name) &&
            v.name !== this.claiming &&
            ![...this.owned.values()].some((o) => o.name === v.name)
          ) {
            this.taint ??= `report names fuzz volume ${v.name}`;
          }
        }
        return;
      case Cmd.REMOTE_IO_RES: {
        const rd = this.reads.get(m.reqId);
        if (!rd) {
          // Ids the hub may have issued since the batch was built cannot be judged.
          if (this.owned.size > 0 && m.reqId <= this.maxReqSeen + 4096) {
            this.taint ??= `REMOTE_IO_RES for req ${m.reqId} maybe issued`;
            return;
          }
          return this.later(
            ErrorCode.PROTOCOL,
            { message: `REMOTE_IO_RES for unknown req_id ${m.reqId}` },
            'remote io: unknown req_id',
          );
        }
        if (m.volumeId !== rd.volumeId)
          return this.later(
            ErrorCode.PROTOCOL,
            { message: `REMOTE_IO_RES ${m.reqId}: volume id ${m.volumeId}, request was for ${rd.volumeId}` },
            'remote io: wrong volume',
          );
        this.reads.delete(m.reqId);
        if (m.ioStatus !== IO_OK) return;
        if (m.data.length !== rd.bytes)
          return this.later(
            ErrorCode.PROTOCOL,
            { message: `REMOTE_IO_RES ${m.reqId}: ${m.data.length} bytes, requested ${rd.bytes}` },
            'remote io: wrong length',
          );
        return;
      }
      case Cmd.DIRTY_REPORT: {
        this.sentDirtyReport = true;
        const v = this.owned.get(m.volumeId);
        if (!v)
          return this.later(
            ErrorCode.UNKNOWN_VOLUME,
            { message: `DIRTY_REPORT for unknown volume id ${m.volumeId}` },
            'dirty report: unknown volume',
          );
        for (const e of m.extents) {
          if (e.sizeSectors === 0) continue;
          if (!this.inRange(v, e.offsetSectors, e.sizeSectors)) {
            const start = e.offsetSectors * SECTOR,
              end = start + e.sizeSectors * SECTOR;
            return this.later(
              ErrorCode.OUT_OF_RANGE,
              { prefix: `DIRTY_REPORT extent [${start}, ${end}) outside volume ${v.name}` },
              'dirty report: out of range',
            );
          }
        }
        return;
      }
      case Cmd.CHECKSUM_RES:
        // The hub asks for checksums only while a verify runs, and none runs during a fuzz campaign.
        return this.later(
          ErrorCode.PROTOCOL,
          { prefix: `CHECKSUM_RES req_id ${m.reqId} ` },
          'checksum: unknown req_id',
        );
      case Cmd.POINT:
        // The hub asks for one only when an interval point falls due (5 s of writes) or a tag is
        // asked for, neither within a fuzz session: the agent's POINT answers nothing (SPEC 5.20).
        return this.later(
          ErrorCode.PROTOCOL,
          { message: 'POINT the hub did not ask for (SPEC.md 5.20)' },
          'point: not asked for',
        );
      default:
        return; // HELLO, PONG, ERROR, FLUSH, AGENT_SHUTDOWN: accepted
    }
  }
}
