// One agent connection on the hub, transport-agnostic: frames in through receive(), frames out
// through the `send` callback. Every frame that touches storage goes through one serial queue,
// so one VM's writes are applied in the order received across all its volumes, and a remote
// read's data is checked against exactly the writes that came before it.
import {
  Cmd, Cap, ALL_CAPS, ErrorCode, PROTOCOL_VERSION, Limits, SECTOR, IO_OK, IO_ZEROES, IO_SPARSE, DIRTY_FINAL, decodeSparse, SparsePiece,
  decode, Message, ProtocolError, ProtectedWrite, RemoteIoRes, DirtyReport, ReportVmVolumes,
  encodeHello, encodeStartProtect, encodeRemoteIoReqHead, encodeWriteAck, encodeDirtyReportAck,
  encodeError, encodePong, encodePing, FrameSealer,
} from '../../protocol';
import type { Logger } from '../log';
import { Replica, TargetOpener } from './replica';
import { VolumeSync, InflightRead } from './sync';
import { DirtyBitmap } from '../../storage/bitmap';
import type { BufferPool } from '../buffer-pool';
import type { GuardedTarget } from '../../storage/overlay';
import { SYNC_WRITE_MAX } from '../../storage/volume';

export interface SessionConfig {
  hubName: string;
  caps: number; // capabilities this hub offers
  maxInflightReads: number; // remote reads in flight per session
  maxReadBytes: number; // largest remote read
  maxQueueBytes: number; // received frames waiting to be applied; above it the transport pauses
  checkpointMs: number; // how often cleared bits and cursors are persisted
  heartbeatMs: number; // PING interval for agents with the PING capability; 3 silent intervals = dead
  handshakeMs: number; // a connection must have reported its volumes by then, or it is closed
  // Group commit: at most one fdatasync round per interval while writes stream in (an explicit
  // flush never waits). Fewer commits cost less CPU on both sides; acks wait at most this long.
  commitIntervalMs: number;
}

export const defaultSessionConfig: SessionConfig = {
  hubName: 'rephub', caps: ALL_CAPS, maxInflightReads: 16, maxReadBytes: 1 << 20,
  maxQueueBytes: 64 << 20, checkpointMs: 5000, heartbeatMs: 2000, handshakeMs: 10_000, commitIntervalMs: 5,
};

export interface SessionHost {
  replica(name: string): Replica | undefined;
  openTarget: TargetOpener;
  onStateChange(r: Replica, from: string): void;
  /** Where large received frames were joined (see hub.ts); their payloads go back once applied. */
  pool?: BufferPool;
}

export interface Transport {
  send(bufs: Buffer[]): void;
  close(reason?: Error): void;
  pause(paused: boolean): void;
}

/** A received frame to apply, or a barrier to run at this point of the stream. */
type Item = { msg: Message; payload: Buffer; bytes: number; run?: undefined } | { msg?: undefined; bytes: 0; run: () => Promise<void> | void };

const SYNC_RUN_MAX = 256 * 1024;

/**
 * A payload the queue may keep: one under 64 KiB can be a view of a socket slab
 * (src/net-read.ts; larger ones are the pool's) and, queued as such, would pin the whole slab
 * where maxQueueBytes counts only its own bytes.
 */
function owned(payload: Buffer): Buffer {
  if (payload.length >= 65536 || payload.buffer.byteLength <= 4 * payload.length) return payload;
  const own = Buffer.allocUnsafeSlow(payload.length);
  payload.copy(own);
  return own;
}

export class AgentSession {
  vm = '';
  caps = 0;
  private helloSeen = false;
  private firstFrame = true;
  private readonly byId = new Map<number, VolumeSync>();
  private readonly claimed = new Set<Replica>(); // replicas this session owns (attached or attaching)
  private readonly reads = new Map<number, InflightRead>();
  private nextReqId = 1;
  private queue: Item[] = [];
  private queueHead = 0;
  private queueBytes = 0;
  private paused = false;
  private draining = false;
  private current: Promise<void> = Promise.resolve();
  private closed = false;
  private cleanShutdown = false;
  // Durable-ack bookkeeping: writes are numbered 1, 2, ... per connection (implicit seq).
  private recvSeq = 0;
  private appliedSeq = 0;
  private ackedSeq = 0;
  private flushRun: Promise<void> | null = null; // the group commit under way
  private commitTimer: NodeJS.Timeout | null = null; // the next group commit, one interval after the last
  private lastCommitAt = -Infinity;
  private readonly touchedTargets = new Set<Replica>();
  private checkpointTimer: NodeJS.Timeout;
  readonly started = Date.now();
  bytesReceived = 0;
  private lastHeard = Date.now();
  // Receive times of unacked writes, one entry per millisecond: the oldest gives the RPO lag.
  private recvTimes: { seq: number; t: number }[] = [];
  private heartbeatTimer: NodeJS.Timeout | null = null;
  private handshakeTimer: NodeJS.Timeout;
  private reported = false;

  constructor(
    readonly id: number, private readonly host: SessionHost, private readonly t: Transport,
    private readonly cfg: SessionConfig, private readonly log: Logger,
    /** Who the link authenticated (certificate CN or PSK identity); null on a plaintext link. */
    readonly identity: string | null = null,
  ) {
    if (identity) this.vm = identity;
    this.checkpointTimer = setInterval(() => void this.checkpoint(), cfg.checkpointMs);
    this.checkpointTimer.unref();
    // An idle or half-open connection must not hold one of the hub's session slots forever.
    this.handshakeTimer = setTimeout(() => {
      if (!this.reported) this.fail(new ProtocolError(`no REPORT_VM_VOLUMES within ${cfg.handshakeMs} ms`));
    }, cfg.handshakeMs);
    this.handshakeTimer.unref();
  }

  /** Drop receive times of acked writes; the head then stands for the oldest unacked one. */
  private trimRecvTimes(acked: number): void {
    const rt = this.recvTimes;
    let drop = 0;
    while (drop + 1 < rt.length && rt[drop + 1].seq <= acked + 1) drop++;
    if (drop) rt.splice(0, drop);
    if (rt.length && rt[0].seq <= acked) {
      if (this.recvSeq === acked) rt.length = 0;
      else rt[0] = { seq: acked + 1, t: rt[0].t }; // conservative: no later than its real receive time
    }
  }

  /** Age of the oldest write received but not yet durable on the recovery volume. */
  rpoLagMs(): number {
    if (this.recvSeq === this.ackedSeq || this.recvTimes.length === 0) return 0;
    return Date.now() - this.recvTimes[0].t;
  }

  private crcOut = false;
  private readonly sealer = new FrameSealer();
  /** One frame out; checksummed once FRAME_CRC is negotiated. */
  private send(bufs: Buffer[]): void {
    this.t.send(this.crcOut ? this.sealer.seal(bufs) : bufs);
  }

  get volumes(): VolumeSync[] {
    return [...this.byId.values()];
  }

  /** One complete frame from the framer. Throws ProtocolError for a bad one. */
  receive(cmd: number, payload: Buffer): void {
    if (this.closed) return;
    this.lastHeard = Date.now();
    this.bytesReceived += payload.length;
    // Only a protected write arriving with nothing queued may be applied at once (writeNow);
    // any other frame that reaches the queue gets its own copy first (owned()).
    const inline = cmd === Cmd.PROTECTED_WRITE && !this.draining && this.queueHead === this.queue.length;
    if (!inline) payload = owned(payload);
    let msg = decode(cmd, payload);
    if (msg.cmd === Cmd.HELLO && !this.firstFrame) throw new ProtocolError('HELLO is only valid as the first frame');
    if (this.firstFrame) {
      this.firstFrame = false;
      if (msg.cmd !== Cmd.HELLO) this.log.info({ session: this.id }, 'agent sent no HELLO: legacy seed protocol, no extensions');
    }
    switch (msg.cmd) {
      case Cmd.HELLO:
        return this.onHello(msg);
      case Cmd.PING:
        return this.send([encodePong(msg.nonce)]);
      case Cmd.PONG:
        return;
      case Cmd.ERROR:
        this.log.warn({ session: this.id, vm: this.vm, code: msg.code, cause: msg.message.slice(0, 256) }, 'agent reported an error');
        return;
      case Cmd.PROTECTED_WRITE: {
        this.recvSeq++;
        const now = Date.now(), last = this.recvTimes[this.recvTimes.length - 1];
        if ((!last || last.t !== now) && this.recvTimes.length < 4096) this.recvTimes.push({ seq: this.recvSeq, t: now });
        if (inline) {
          if (this.writeNow(msg)) {
            this.host.pool?.give(payload);
            this.kickFlush();
            this.pumpSoon();
            return;
          }
          const own = owned(payload); // queued after all (rare): failover, a view, a large write
          if (own !== payload) msg = decode(cmd, (payload = own));
        }
        break;
      }
      case Cmd.START_PROTECT: case Cmd.REMOTE_IO_REQ: case Cmd.WRITE_ACK: case Cmd.DIRTY_REPORT_ACK:
      case Cmd.CHECKSUM_REQ:
        throw new ProtocolError(`command ${Cmd[msg.cmd]} goes hub->agent, not agent->hub`);
    }
    this.enqueue({ msg, payload, bytes: payload.length });
  }

  private onHello(h: Extract<Message, { cmd: Cmd.HELLO }>): void {
    if (this.helloSeen) throw new ProtocolError('second HELLO');
    this.helloSeen = true;
    if (this.identity && h.name !== this.identity) {
      throw new ProtocolError(`HELLO names VM "${h.name}" but the link authenticated "${this.identity}"`, ErrorCode.UNAUTHORIZED);
    }
    this.caps = h.caps & this.cfg.caps;
    this.vm = h.name;
    this.send([encodeHello(Math.max(1, Math.min(PROTOCOL_VERSION, h.version)), this.caps, Limits.maxPayload, this.cfg.hubName)]);
    this.crcOut = (this.caps & Cap.FRAME_CRC) !== 0; // every frame after our HELLO carries a CRC
    this.log.info({ session: this.id, vm: this.vm, version: h.version, caps: this.caps }, 'agent hello');
    if (this.caps & Cap.PING) {
      const ms = this.cfg.heartbeatMs;
      this.heartbeatTimer = setInterval(() => {
        const silent = Date.now() - this.lastHeard;
        if (silent > 3 * ms && !this.paused) this.fail(new Error(`agent silent for ${silent} ms: connection presumed dead`));
        else this.send([encodePing(Date.now())]);
      }, ms);
      this.heartbeatTimer.unref();
    }
  }

  private enqueue(it: Item): void {
    this.queue.push(it);
    this.queueBytes += it.bytes;
    if (!this.paused && this.queueBytes > this.cfg.maxQueueBytes) {
      this.paused = true;
      this.t.pause(true);
    }
    if (!this.draining) this.current = this.drain();
  }

  private async drain(): Promise<void> {
    this.draining = true;
    try {
      while (this.queueHead < this.queue.length && !this.closed) {
        const it = this.queue[this.queueHead++];
        if (it.run) await it.run();
        else {
          await this.apply(it.msg!);
          this.host.pool?.give(it.payload); // applied: nothing refers to its bytes any more
        }
        this.queueBytes -= it.bytes;
        if (this.paused && this.queueBytes <= this.cfg.maxQueueBytes / 2) {
          this.paused = false;
          this.t.pause(false);
        }
        if (this.queueHead > 1024) {
          this.queue = this.queue.slice(this.queueHead);
          this.queueHead = 0;
        }
      }
    } catch (e) {
      this.fail(e as Error);
    } finally {
      this.draining = false;
    }
    if (this.closed) return;
    this.kickFlush();
    this.pump();
  }

  private async apply(m: Message): Promise<void> {
    switch (m.cmd) {
      case Cmd.REPORT_VM_VOLUMES: return this.onReport(m);
      case Cmd.PROTECTED_WRITE: return this.onWrite(m);
      case Cmd.REMOTE_IO_RES: return this.onRemoteIoRes(m);
      case Cmd.DIRTY_REPORT: return this.onDirtyReport(m);
      case Cmd.FLUSH: {
        this.kickFlush();
        const hooks = this.flushHooks.splice(0);
        for (const h of hooks) await h();
        return;
      }
      case Cmd.AGENT_SHUTDOWN: return this.onShutdown();
      case Cmd.CHECKSUM_RES: return; // only solicited by verify; none outstanding yet
      default:
        throw new ProtocolError(`unexpected ${Cmd[m.cmd] ?? m.cmd}`);
    }
  }

  /**
   * Run `fn` at the current point of this VM's write stream: after every frame received so far
   * is applied and before any later one. A failover-test freeze taken here is consistent
   * across the VM's volumes.
   */
  barrier<T>(fn: () => Promise<T> | T): Promise<T> {
    return new Promise((resolve, reject) => {
      this.enqueue({ bytes: 0, run: async () => {
        try { resolve(await fn()); } catch (e) { reject(e); }
      } });
    });
  }

  private flushHooks: (() => Promise<void>)[] = [];

  /**
   * Like barrier(), but at the next flush/checkpoint marker of the agent (the guest's own
   * consistency point), if one arrives within `waitMs`; else at the current point.
   */
  barrierAtFlush<T>(fn: () => Promise<T> | T, waitMs: number): Promise<T> {
    if (!(this.caps & Cap.FLUSH)) return this.barrier(fn);
    return new Promise((resolve, reject) => {
      let done = false;
      const hook = async () => {
        if (done) return;
        done = true;
        clearTimeout(timer);
        try { resolve(await fn()); } catch (e) { reject(e); }
      };
      const timer = setTimeout(() => {
        if (done) return;
        this.flushHooks = this.flushHooks.filter((h) => h !== hook);
        this.barrier(fn).then(resolve, reject);
        done = true;
      }, waitMs);
      this.flushHooks.push(hook);
    });
  }

  private readonly writeBacks = new Map<number, { resolve: () => void; reject: (e: Error) => void }>();

  /**
   * Failback: write the given regions of the recovery volume to the protected volume with
   * remote IO writes (is_read=0), a bounded number in flight. Returns the bytes moved.
   */
  async writeBack(s: VolumeSync, regions: DirtyBitmap): Promise<number> {
    const rep = s.replica, rs = regions.regionSize, max = Math.max(1, Math.floor(this.cfg.maxReadBytes / rs));
    let moved = 0;
    const inflight = new Set<Promise<void>>();
    for (const [a, b] of regions.runs()) {
      for (let r = a; r < b; r += max) {
        if (this.closed) throw new Error(`agent session for ${rep.name} closed during failback`);
        const start = r * rs, end = Math.min(Math.min(b, r + max) * rs, regions.sizeBytes);
        const data = Buffer.allocUnsafe(end - start);
        await rep.target!.base.read(data, start);
        const reqId = this.nextReqId++ >>> 0;
        const done = new Promise<void>((resolve, reject) => this.writeBacks.set(reqId, { resolve, reject }));
        this.send([encodeRemoteIoReqHead(reqId, (end - start) / SECTOR, s.volumeId, start / SECTOR, false), data]);
        moved += end - start;
        const p = done.finally(() => inflight.delete(p));
        inflight.add(p);
        if (inflight.size >= this.cfg.maxInflightReads) await Promise.race(inflight);
      }
    }
    await Promise.all(inflight);
    return moved;
  }

  volumeByName(name: string): VolumeSync | undefined {
    return [...this.byId.values()].find((v) => v.replica.name === name);
  }

  private async onReport(m: ReportVmVolumes): Promise<void> {
    this.reported = true;
    const trust = (this.caps & (Cap.DIRTY_REPORT | Cap.WRITE_ACK)) === (Cap.DIRTY_REPORT | Cap.WRITE_ACK);
    for (const v of m.volumes) {
      const rep = this.host.replica(v.name);
      const ctx = { session: this.id, vm: this.vm, volume: v.name, sizeBytes: v.sizeBytes };
      if (!rep) {
        this.log.warn(ctx, 'agent reported a volume the hub has no recovery volume for; not protected');
        continue;
      }
      if (rep.spec.vm && rep.spec.vm !== this.vm) {
        this.log.error({ ...ctx, boundTo: rep.spec.vm }, 'volume is bound to another VM; refused');
        this.send([encodeError(ErrorCode.UNAUTHORIZED, `volume ${v.name} may only be protected by VM ${rep.spec.vm}`)]);
        continue;
      }
      if (rep.owner && rep.owner !== this && this.vm !== '' && rep.owner.vm === this.vm) {
        // The same VM reconnected before the hub noticed its old connection die: take over.
        this.log.warn(ctx, 'volume held by an older session of the same VM; replacing it');
        rep.owner.fail(new Error(`replaced by a new connection from VM ${this.vm}`));
      }
      if (rep.owner && rep.owner !== this) {
        this.log.error(ctx, 'volume is already protected by another agent session; refused');
        this.send([encodeError(ErrorCode.VOLUME_REFUSED, `volume ${v.name} is already protected by another agent`)]);
        continue;
      }
      if (rep.owner === this) continue;
      if (v.sizeBytes % SECTOR !== 0 || v.sizeBytes === 0) {
        this.send([encodeError(ErrorCode.VOLUME_REFUSED, `volume ${v.name}: size ${v.sizeBytes} is not a positive multiple of 512`)]);
        continue;
      }
      rep.owner = this;
      this.claimed.add(rep);
      await rep.idle; // a previous session's last apply must land first
      if (this.closed) return;
      try {
        const from = rep.state;
        const rec = await rep.attach(v.sizeBytes, this.host.openTarget, trust, this.vm);
        if (this.closed) return;
        const sync = new VolumeSync(rep, rec.id, trust);
        this.byId.set(rec.id, sync);
        this.host.onStateChange(rep, from);
        this.log.info({ ...ctx, volumeId: rec.id, generation: rec.generation, dirtyBytes: rep.bitmap!.dirtyBytes, recovery: rep.spec.path }, 'protection started');
        this.send([encodeStartProtect(rec.id, v.name)]);
        this.maybeConverged(sync); // nothing to resync (e.g. legacy agent after a clean shutdown)
      } catch (e) {
        rep.owner = null;
        this.claimed.delete(rep);
        rep.lastError = (e as Error).message;
        this.log.error({ ...ctx, cause: (e as Error).message }, 'cannot protect volume');
        this.send([encodeError(ErrorCode.VOLUME_REFUSED, `volume ${v.name}: ${(e as Error).message}`)]);
      }
    }
  }

  private volume(id: number, what: string): VolumeSync {
    const s = this.byId.get(id);
    if (!s) throw new ProtocolError(`${what} for unknown volume id ${id}`, ErrorCode.UNKNOWN_VOLUME);
    return s;
  }

  private range(s: VolumeSync, offsetSectors: number, sizeSectors: number, what: string): [number, number] {
    const start = offsetSectors * SECTOR, end = start + sizeSectors * SECTOR;
    const size = s.replica.record!.sizeBytes;
    if (end > size || !Number.isSafeInteger(end)) {
      throw new ProtocolError(`${what} [${start}, ${end}) outside volume ${s.replica.name} (${size} bytes)`, ErrorCode.OUT_OF_RANGE);
    }
    return [start, end];
  }

  private async onWrite(m: ProtectedWrite): Promise<void> {
    const s = this.volume(m.volumeId, 'PROTECTED_WRITE');
    const [start, end] = this.range(s, m.offsetSectors, m.sizeSectors, 'PROTECTED_WRITE');
    const rep = s.replica, bm = s.bitmap;
    if (rep.failover) {
      // Promoted replica: the protected side's writes are recorded, not applied, until failback.
      rep.failover.protectedChanged.mark(start, end);
      this.appliedSeq++;
      return;
    }
    const first = bm.regionOf(start), last = bm.regionOf(end - 1);
    s.touch(first, last);
    if (m.ioStatus !== IO_OK) {
      // The guest's write failed locally; what the protected volume holds there is unknown.
      await rep.markDirty(first, last);
    } else {
      try {
        if (!rep.target!.tryWriteSync(m.data, start)) await rep.target!.write(m.data, start);
        this.written(s, m.data.length, start, end, first, last);
      } catch (e) {
        await this.volumeFault(s, e as Error, start, first, last);
      }
    }
    this.appliedSeq++;
    this.maybeConverged(s);
  }

  /**
   * onWrite for a small write arriving with nothing queued before it, done before returning:
   * no queue entry, no promise. False: it takes the queue (failover, a failed guest write, a
   * point-in-time view to preserve, a large write, or a failed pwrite, redone and handled there).
   */
  private writeNow(m: ProtectedWrite): boolean {
    const s = this.volume(m.volumeId, 'PROTECTED_WRITE');
    const [start, end] = this.range(s, m.offsetSectors, m.sizeSectors, 'PROTECTED_WRITE');
    const rep = s.replica, t = rep.target;
    if (rep.failover || m.ioStatus !== IO_OK || !t) return false;
    const bm = s.bitmap, first = bm.regionOf(start), last = bm.regionOf(end - 1);
    s.touch(first, last); // again if it is queued after all: the same marks
    try {
      if (!t.tryWriteSync(m.data, start)) return false;
    } catch {
      return false;
    }
    this.written(s, m.data.length, start, end, first, last);
    this.appliedSeq++;
    this.maybeConverged(s);
    return true;
  }

  private written(s: VolumeSync, bytes: number, start: number, end: number, first: number, last: number): void {
    const rep = s.replica, bm = s.bitmap;
    rep.bytesApplied += bytes;
    rep.writesApplied++;
    rep.lastWriteOk = true;
    this.touchedTargets.add(rep);
    // Whole regions the write covers are now exact, unless a read of them is in flight.
    const fullFirst = start % bm.regionSize === 0 ? first : first + 1;
    const fullLast = end % bm.regionSize === 0 || end === bm.sizeBytes ? last : last - 1;
    for (let r = fullFirst; r <= fullLast; r++) if (!s.inflightRegions.has(r) && bm.get(r)) bm.clearRegions(r, r);
  }

  /** The recovery volume failed (ENOSPC, EIO): keep the regions dirty, keep serving others. */
  private async volumeFault(s: VolumeSync, e: Error, offset: number, first: number, last: number): Promise<void> {
    const rep = s.replica;
    rep.lastError = e.message;
    rep.lastWriteOk = false;
    rep.errors++;
    this.log.error({ volume: rep.name, recovery: rep.spec.path, offset, cause: e.message }, 'recovery volume write failed; regions stay dirty');
    await rep.markDirty(first, last);
    if (rep.state !== 'error') {
      const from = rep.state;
      rep.setState('error');
      this.host.onStateChange(rep, from);
    }
    s.retryAt = Date.now() + 1000;
  }

  /**
   * Sync data runs up to SYNC_RUN_MAX go straight to the page cache in SYNC_WRITE_MAX pieces:
   * sync answers are applied one at a time, and a threadpool round trip per run left answers
   * waiting in the queue (the reads were idle half the time).
   */
  private async writeRun(t: GuardedTarget, d: Buffer, at: number): Promise<void> {
    if (d.length <= SYNC_RUN_MAX) {
      let o = 0;
      while (o < d.length && t.tryWriteSync(d.subarray(o, Math.min(o + SYNC_WRITE_MAX, d.length)), at + o)) o += SYNC_WRITE_MAX;
      if (o >= d.length) return;
      d = d.subarray(o);
      at += o;
    }
    await t.write(d, at);
  }

  /** Apply [a, b) of a sparse answer to a read that began at `start`: zero runs, then data. */
  private async writeSparse(s: VolumeSync, pieces: SparsePiece[], start: number, a: number, b: number): Promise<void> {
    // Zero runs first: they are checked against the replica's known-zero regions, which this
    // answer's own data would otherwise clear.
    for (const zero of [true, false]) {
      for (const p of pieces) {
        if ((p.data === null) !== zero) continue;
        const pa = Math.max(a, start + p.offset), pb = Math.min(b, start + p.offset + p.length);
        if (pa >= pb) continue;
        if (p.data) await this.writeRun(s.replica.target!, p.data.subarray(pa - start - p.offset, pb - start - p.offset), pa);
        else await s.replica.zeroBytes(pa, pb);
      }
    }
  }

  private async onRemoteIoRes(m: RemoteIoRes): Promise<void> {
    const wb = this.writeBacks.get(m.reqId);
    if (wb) {
      this.writeBacks.delete(m.reqId);
      if (m.ioStatus === IO_OK) wb.resolve();
      else wb.reject(new Error(`remote write on the protected volume failed: io_status ${m.ioStatus}`));
      return;
    }
    const rd = this.reads.get(m.reqId);
    if (!rd) throw new ProtocolError(`REMOTE_IO_RES for unknown req_id ${m.reqId}`);
    const s = rd.sync;
    if (m.volumeId !== s.volumeId) throw new ProtocolError(`REMOTE_IO_RES ${m.reqId}: volume id ${m.volumeId}, request was for ${s.volumeId}`);
    this.reads.delete(m.reqId);
    s.end(rd);
    const bm = s.bitmap, rs = bm.regionSize;
    const start = rd.first * rs, end = Math.min((rd.last + 1) * rs, bm.sizeBytes);
    const zeroes = m.ioStatus === IO_ZEROES && (this.caps & Cap.ZEROES) !== 0 && m.data.length === 0;
    const sparse = m.ioStatus === IO_SPARSE && (this.caps & Cap.SPARSE) !== 0;
    if (m.ioStatus !== IO_OK && !zeroes && !sparse) {
      s.replica.lastError = `remote read at ${start} failed on the agent: io_status ${m.ioStatus}`;
      s.replica.errors++;
      this.log.error({ volume: s.replica.name, offset: start, ioStatus: m.ioStatus }, 'remote read failed on the agent; region stays dirty');
      s.retryAt = Date.now() + 1000;
      return;
    }
    if (!zeroes && !sparse && m.data.length !== end - start) {
      throw new ProtocolError(`REMOTE_IO_RES ${m.reqId}: ${m.data.length} bytes, requested ${end - start}`);
    }
    const pieces = sparse ? decodeSparse(end - start, m.data) : null;
    // Write the regions no protected write touched since the read was issued.
    let r = rd.first;
    while (r <= rd.last) {
      if (rd.touched.has(r) || !bm.get(r)) { r++; continue; }
      let e = r;
      while (e + 1 <= rd.last && !rd.touched.has(e + 1) && bm.get(e + 1)) e++;
      const a = r * rs, b = Math.min((e + 1) * rs, bm.sizeBytes);
      try {
        if (pieces) await this.writeSparse(s, pieces, start, a, b);
        else if (!zeroes) await s.replica.target!.write(m.data.subarray(a - start, b - start), a);
        else await s.replica.writeZeroes(r, e); // nothing written where the replica is known zero
        // No flush here: sync data needs no ack; the checkpoint flushes before it persists clears.
        s.replica.syncBytes += b - a;
        s.replica.lastWriteOk = true;
        bm.clearRegions(r, e);
      } catch (err) {
        await this.volumeFault(s, err as Error, a, r, e);
      }
      r = e + 1;
    }
    this.maybeConverged(s);
    this.pump(); // keep the pipeline full while responses stream in
  }

  private async onDirtyReport(m: DirtyReport): Promise<void> {
    const s = this.volume(m.volumeId, 'DIRTY_REPORT');
    const bm = s.bitmap;
    const fo = s.replica.failover;
    let bytes = 0;
    for (const e of m.extents) {
      if (e.sizeSectors === 0) continue;
      const [start, end] = this.range(s, e.offsetSectors, e.sizeSectors, 'DIRTY_REPORT extent');
      if (fo) { fo.protectedChanged.mark(start, end); bytes += end - start; continue; }
      bm.setBytes(start, end);
      bytes += end - start;
      s.touch(bm.regionOf(start), bm.regionOf(end - 1));
    }
    await s.replica.commitDirty();
    if (m.flags & DIRTY_FINAL) s.awaitingReport = false;
    this.log.info({ volume: s.replica.name, extents: m.extents.length, bytes, final: !!(m.flags & DIRTY_FINAL) }, 'agent dirty report');
    this.send([encodeDirtyReportAck(m.volumeId, m.reportId)]);
    if (s.replica.state === 'protecting' && bm.dirtyRegions > 0) this.setState(s, 'syncing');
    this.maybeConverged(s);
  }

  private async onShutdown(): Promise<void> {
    this.cleanShutdown = true;
    this.log.info({ session: this.id, vm: this.vm }, 'agent shutdown');
    await this.flushNow();
    for (const s of this.byId.values()) {
      const rep = s.replica;
      if (rep.failover) continue;
      rep.record!.cleanShutdown = true;
      this.setState(s, 'stopped');
      await rep.checkpoint();
    }
  }

  setState(s: VolumeSync, st: 'syncing' | 'protecting' | 'stopped' | 'degraded' | 'failed-over'): void {
    const rep = s.replica;
    if (rep.state === st) return;
    const from = rep.state;
    rep.setState(st);
    this.host.onStateChange(rep, from);
    // Persist a converged bitmap at once, so a crash right after costs no resync of it.
    if (st === 'protecting') void rep.checkpoint().catch((e) => this.log.warn({ volume: rep.name, cause: e.message }, 'checkpoint failed'));
  }

  private maybeConverged(s: VolumeSync): void {
    if (s.replica.failover) return;
    if (s.replica.state === 'error' && s.retryAt <= Date.now() && s.replica.lastWriteOk) {
      this.log.info({ volume: s.replica.name }, 'recovery volume writable again; resyncing what failed');
      s.replica.lastError = undefined;
      this.setState(s, 'syncing');
    }
    const st = s.replica.state;
    if (st === 'syncing' && s.converged) this.setState(s, 'protecting');
    else if (st === 'protecting' && !s.converged) this.setState(s, 'syncing');
  }

  private pumpScheduled = false;
  /** pump() once at the end of this turn, not once per write applied in it. */
  private pumpSoon(): void {
    if (this.pumpScheduled) return;
    this.pumpScheduled = true;
    setImmediate(() => {
      this.pumpScheduled = false;
      this.pump();
    });
  }

  /** Issue remote reads for dirty regions, up to the in-flight limit, round-robin over volumes. */
  pump(): void {
    if (this.closed || this.cleanShutdown) return;
    const maxRegions = (vs: VolumeSync) => Math.max(1, Math.floor(this.cfg.maxReadBytes / vs.bitmap.regionSize));
    let progress = true;
    const now = Date.now();
    while (progress && this.reads.size < this.cfg.maxInflightReads) {
      progress = false;
      for (const s of this.byId.values()) {
        if (this.reads.size >= this.cfg.maxInflightReads) break;
        if (s.replica.failover || s.awaitingReport) continue; // the agent's report comes first: no wasted reads
        if (s.retryAt > now) { this.retryLater(s.retryAt - now); continue; }
        const run = s.nextRun(maxRegions(s));
        if (!run) continue;
        const bm = s.bitmap, rs = bm.regionSize;
        const start = run[0] * rs, end = Math.min((run[1] + 1) * rs, bm.sizeBytes);
        const rd: InflightRead = { reqId: this.nextReqId++ >>> 0, sync: s, first: run[0], last: run[1], touched: new Set() };
        s.begin(rd);
        this.reads.set(rd.reqId, rd);
        if (s.replica.state !== 'syncing' && s.replica.state !== 'error') this.setState(s, 'syncing');
        this.send([encodeRemoteIoReqHead(rd.reqId, (end - start) / SECTOR, s.volumeId, start / SECTOR, true)]);
        progress = true;
      }
    }
  }

  private retryTimer: NodeJS.Timeout | null = null;
  private retryLater(ms: number): void {
    if (this.retryTimer) return;
    this.retryTimer = setTimeout(() => {
      this.retryTimer = null;
      this.pump();
    }, ms);
  }

  /** Group commit: flush every volume written since the last flush, then ack the writes. */
  private kickFlush(): void {
    if (this.flushRun || this.commitTimer || this.closed || this.appliedSeq === this.ackedSeq && this.touchedTargets.size === 0) return;
    const wait = this.lastCommitAt + this.cfg.commitIntervalMs - performance.now();
    if (wait > 0) {
      this.commitTimer = setTimeout(() => { this.commitTimer = null; this.kickFlush(); }, Math.ceil(wait));
      return;
    }
    const run = this.commitOnce().finally(() => {
      if (this.flushRun === run) this.flushRun = null;
      this.kickFlush(); // writes that came in meanwhile: the next round, an interval later
    });
    this.flushRun = run;
    run.catch((e) => this.fail(e));
  }

  /** Flush and ack everything applied so far; waits for a group commit already under way. */
  private async flushNow(): Promise<void> {
    while (this.flushRun) await this.flushRun.catch(() => undefined);
    this.flushRun = this.flushLoop();
    try {
      await this.flushRun;
    } finally {
      this.flushRun = null;
    }
  }

  private async flushLoop(): Promise<void> {
    while (!this.closed && (this.appliedSeq > this.ackedSeq || this.touchedTargets.size > 0)) await this.commitOnce();
  }

  /** One group commit round: flush the volumes written so far, then ack up to there. */
  private async commitOnce(): Promise<void> {
    this.lastCommitAt = performance.now();
    const seq = this.appliedSeq;
    const targets = [...this.touchedTargets];
    this.touchedTargets.clear();
    await Promise.all(targets.map((r) => r.target!.flush().catch((e) => {
      r.lastError = e.message;
      this.log.error({ volume: r.name, cause: e.message }, 'flush of recovery volume failed');
      throw e;
    })));
    if (seq > this.ackedSeq) {
      this.ackedSeq = seq;
      this.trimRecvTimes(seq);
      if (this.caps & Cap.WRITE_ACK) this.send([encodeWriteAck(seq)]);
    }
  }

  private async checkpoint(): Promise<void> {
    for (const s of this.byId.values()) {
      await s.replica.checkpoint().catch((e) => this.log.warn({ volume: s.replica.name, cause: e.message }, 'checkpoint failed'));
    }
    this.pump();
  }

  /** Protocol or internal failure: tell the peer, close this session only. */
  fail(e: Error): void {
    if (this.closed) return;
    const code = e instanceof ProtocolError ? e.code : ErrorCode.IO;
    this.log.error({ session: this.id, vm: this.vm, cause: e.message }, 'closing agent session');
    try {
      this.send([encodeError(code, e.message)]);
    } catch { /* transport already gone */ }
    this.t.close(e);
    void this.detach();
  }

  /** The transport is gone. Volumes not cleanly shut down become degraded; their bits stay. */
  async detach(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    clearInterval(this.checkpointTimer);
    clearTimeout(this.handshakeTimer);
    if (this.heartbeatTimer) clearInterval(this.heartbeatTimer);
    if (this.retryTimer) clearTimeout(this.retryTimer);
    if (this.commitTimer) clearTimeout(this.commitTimer);
    for (const wb of this.writeBacks.values()) wb.reject(new Error('agent session closed'));
    this.writeBacks.clear();
    // Barriers still waiting run at the end of what was applied: the stream stopped there.
    const pendingRuns = this.queue.slice(this.queueHead).filter((it) => it.run);
    const hooks = this.flushHooks.splice(0);
    void this.current.then(async () => {
      for (const it of pendingRuns) await it.run!();
      for (const h of hooks) await h();
    });
    const inFlight = this.current;
    for (const rep of this.claimed) {
      if (rep.owner !== this) continue;
      rep.owner = null;
      rep.idle = inFlight.then(async () => {
        if (!this.cleanShutdown && rep.record && rep.state !== 'degraded' && !rep.failover) {
          const from = rep.state;
          rep.setState('degraded');
          this.host.onStateChange(rep, from);
        }
        await rep.checkpoint().catch(() => undefined);
      });
    }
    this.log.info({ session: this.id, vm: this.vm, clean: this.cleanShutdown, received: this.recvSeq, acked: this.ackedSeq }, 'agent session closed');
    await Promise.all([...this.claimed].map((r) => r.idle));
  }
}
