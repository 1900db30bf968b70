// The replication agent: mirrors every completed local write of the protected volumes to the
// hub, answers the hub's remote IO, and keeps a dirty log so that a slow or absent hub costs a
// delta resync, never a stalled VM or unbounded memory. Transport: TCP with reconnect.
import * as net from 'node:net';
import * as tls from 'node:tls';
import { createHash } from 'node:crypto';
import {
  Cmd, Cap, ALL_CAPS, PROTOCOL_VERSION, Limits, SECTOR, IO_OK, IO_ZEROES, IO_SPARSE, SPARSE_CHUNK, SPARSE_MAP_BYTES, DIRTY_FINAL, CHECKSUM_BYTES,
  chunkCount, encodeSparseMap,
  FrameDecoder, decode, Message, ProtocolError, RemoteIoReq, ChecksumReq, Extent,
  encodeHello, encodeReportVmVolumes, encodeProtectedWriteHead, encodeRemoteIoResHead, encodeAgentShutdown,
  encodeDirtyReport, encodeChecksumRes, encodePong, encodePing, encodeFlush, FrameSealer,
} from '../../protocol';
import { DirtyBitmap } from '../../storage/bitmap';
import { writeBatched, writeBatchedThen } from '../net-batch';
import { BufferPool } from '../buffer-pool';
import { BlockTarget, SYNC_WRITE_MAX, ZEROES } from '../../storage/volume';
import type { Logger } from '../log';
import { DirtyLog } from '../../storage/dirty-log';

function isZero(b: Buffer): boolean {
  for (let o = 0; o < b.length; o += ZEROES.length) {
    const n = Math.min(ZEROES.length, b.length - o);
    if (b.compare(ZEROES, 0, n, o, o + n) !== 0) return false; // native memcmp
  }
  return true;
}

/** The hub's reads are replication traffic: bulk reads where the target has them. */
function readBulk(t: BlockTarget, buf: Buffer, offset: number): Promise<void> {
  return t.readBulk ? t.readBulk(buf, offset) : t.read(buf, offset);
}

export interface AgentVolumeSpec { name: string; target: BlockTarget; log: DirtyLog }

export interface AgentOptions {
  hubHost: string;
  hubPort: number;
  vm: string;
  volumes: AgentVolumeSpec[];
  log: Logger;
  caps?: number;
  maxQueueBytes?: number; // mirrored bytes buffered towards the hub; beyond it writes become dirty bits
  maxPendingWrites?: number; // mirrored writes awaiting the hub's durable ack
  maxRemoteIo?: number; // remote IOs executed at once
  seekData?: boolean; // find holes with SEEK_DATA/SEEK_HOLE (off: read everything, still send only non-zero chunks)
  reconnectMaxMs?: number;
  heartbeatMs?: number; // PING interval; the link is declared dead after 3 silent intervals
  tls?: tls.ConnectionOptions; // TLS (certificates or PSK) to the hub; plaintext when absent
}

interface Pending { seq: number; vol: AgentVolume; first: number; last: number }

class AgentVolume {
  id = -1; // hub-assigned volume_id; -1 until START_PROTECT
  readonly regionSeq = new Map<number, number>(); // region -> last mirrored seq touching it
  readonly busy = new Map<number, number>(); // region -> local writes in progress (not yet mirrored)
  // Byte ranges being written: an overlapping write waits, so the order writes land on the
  // image is the order they are mirrored in.
  private locks: { start: number; end: number; done: Promise<void> }[] = [];
  /** A write in progress overlaps [start, end): a new one must wait for it (lock()). */
  locked(start: number, end: number): boolean {
    for (const l of this.locks) if (l.start < end && start < l.end) return true;
    return false;
  }
  async lock(start: number, end: number): Promise<() => void> {
    for (;;) {
      const c = this.locks.find((l) => l.start < end && start < l.end);
      if (!c) break;
      await c.done;
    }
    let release!: () => void;
    const l = { start, end, done: new Promise<void>((r) => (release = r)) };
    this.locks.push(l);
    return () => {
      this.locks.splice(this.locks.indexOf(l), 1);
      release();
    };
  }
  owed: DirtyBitmap; // dirty regions the hub has not been told about on this connection
  handing: DirtyBitmap | null = null; // regions in the report awaiting the hub's ack
  reportId = 0;
  acksAwaited = 0;
  constructor(readonly spec: AgentVolumeSpec) {
    this.owed = new DirtyBitmap(spec.target.sizeBytes, spec.log.bitmap.regionSize);
  }
  get name() { return this.spec.name; }
  get log() { return this.spec.log; }
  reset(): void {
    this.id = -1; // busy survives: those writes are still landing on the image
    this.regionSeq.clear();
    this.owed = new DirtyBitmap(this.spec.target.sizeBytes, this.spec.log.bitmap.regionSize);
    this.handing = null;
    this.acksAwaited = 0;
  }
}

export class ReplicationAgent {
  private readonly vols: AgentVolume[];
  private readonly byName = new Map<string, AgentVolume>();
  private readonly byId = new Map<number, AgentVolume>();
  private sock: net.Socket | null = null;
  private caps = 0;
  private ready = false; // HELLO answered (or legacy assumed)
  private sentSeq = 0;
  // Buffers for the hub's reads (at most maxRemoteIo in use): reused, not reallocated per read.
  private readonly readPool = new BufferPool(1 << 20, 16);
  /** Guest write buffers (the NBD server receives large writes into them); mirror() holds one until sent. */
  readonly writePool = new BufferPool(1 << 20, 16);
  private crcOut = false;
  private sealer = new FrameSealer();
  private pending: Pending[] = [];
  private pendingHead = 0;
  private remoteActive = 0;
  private remoteQueue: RemoteIoReq[] = [];
  private stopping = false;
  private backoff = 100;
  private reconnectTimer: NodeJS.Timeout | null = null;
  private heartbeat: NodeJS.Timeout | null = null;
  private lastHeard = 0;
  private syncTimer: NodeJS.Timeout;
  private readonly o: Required<Omit<AgentOptions, 'volumes' | 'log' | 'tls'>>;
  // counters for status and tests
  stats = { writes: 0, mirroredBytes: 0, overflowWrites: 0, remoteReads: 0, remoteReadBytes: 0, remoteZeroBytes: 0, remoteDiskBytes: 0, remoteWrites: 0, connects: 0, reportedBytes: 0 };

  constructor(private readonly opts: AgentOptions) {
    this.o = {
      hubHost: opts.hubHost, hubPort: opts.hubPort, vm: opts.vm,
      // TLS records are authenticated already: frame checksums would only repeat that work
      caps: opts.caps ?? (opts.tls ? ALL_CAPS & ~Cap.FRAME_CRC : ALL_CAPS),
      maxQueueBytes: opts.maxQueueBytes ?? 64 << 20, maxPendingWrites: opts.maxPendingWrites ?? 65536,
      maxRemoteIo: opts.maxRemoteIo ?? 16, seekData: opts.seekData ?? true, reconnectMaxMs: opts.reconnectMaxMs ?? 5000, heartbeatMs: opts.heartbeatMs ?? 2000,
    };
    this.vols = opts.volumes.map((v) => new AgentVolume(v));
    for (const v of this.vols) this.byName.set(v.name, v);
    this.syncTimer = setInterval(() => { for (const v of this.vols) v.log.sync(); }, 1000);
    this.syncTimer.unref();
  }

  get log(): Logger { return this.opts.log; }
  get connected(): boolean { return this.ready; }

  start(): void {
    this.connect();
  }

  // ---- the write path (called by the NBD server or a test driver) ----

  /**
   * Apply a guest write to the local image and mirror it. Never waits for the hub. A large
   * write may come as the pieces it arrived in: written with writev and mirrored as they are.
   */
  async write(name: string, offset: number, data: Buffer | Buffer[]): Promise<void> {
    if (!Array.isArray(data) && this.writeNow(name, offset, data)) return;
    const v = this.vol(name);
    let len = 0;
    if (Array.isArray(data)) for (const p of data) len += p.length;
    else len = data.length;
    this.checkRange(v, offset, offset + len);
    const unlock = await v.lock(offset, offset + len);
    try {
      const [first, last] = this.begin(v, offset, offset + len);
      try {
        const t = v.spec.target;
        if (Array.isArray(data)) await (t.writev ? t.writev(data, offset) : t.write(Buffer.concat(data, len), offset));
        else if (t.writeSync && len <= SYNC_WRITE_MAX) t.writeSync(data, offset);
        else await t.write(data, offset);
        this.mirror(v, offset, data, len);
      } finally {
        this.end(v, first, last);
      }
    } finally {
      unlock();
    }
  }

  /**
   * The same for a small write, done before returning: true when written and mirrored, false
   * when it must go through write() (too large, or an overlapping write still in progress).
   * Nothing can come between its pwrite and its mirror frame, so it needs no range lock.
   */
  writeNow(name: string, offset: number, data: Buffer): boolean {
    const v = this.vol(name), len = data.length, t = v.spec.target;
    if (!t.writeSync || len > SYNC_WRITE_MAX) return false;
    this.checkRange(v, offset, offset + len);
    if (v.locked(offset, offset + len)) return false;
    const [first, last] = this.begin(v, offset, offset + len);
    try {
      t.writeSync(data, offset);
      this.mirror(v, offset, data, len);
    } finally {
      this.end(v, first, last);
    }
    return true;
  }

  private checkRange(v: AgentVolume, start: number, end: number): void {
    if (start < 0 || end > v.spec.target.sizeBytes || end <= start) throw new RangeError(`IO [${start}, ${end}) outside ${v.name} (${v.spec.target.sizeBytes} bytes)`);
  }

  /** Persist the regions dirty before the image changes, and keep them from being cleared meanwhile. */
  private begin(v: AgentVolume, start: number, end: number): [number, number] {
    v.log.mark(start, end);
    const bm = v.log.bitmap, first = bm.regionOf(start), last = bm.regionOf(end - 1);
    for (let r = first; r <= last; r++) v.busy.set(r, (v.busy.get(r) ?? 0) + 1);
    return [first, last];
  }

  private end(v: AgentVolume, first: number, last: number): void {
    for (let r = first; r <= last; r++) {
      const n = v.busy.get(r)! - 1;
      if (n === 0) v.busy.delete(r);
      else v.busy.set(r, n);
    }
  }

  /** Zeroing/trim: applied locally; the range is handed to the hub as dirty instead of as data. */
  async zero(name: string, offset: number, length: number, apply: () => Promise<void>): Promise<void> {
    const v = this.vol(name);
    this.checkRange(v, offset, offset + length);
    const unlock = await v.lock(offset, offset + length);
    try {
      const [first, last] = this.begin(v, offset, offset + length);
      try {
        await apply();
        this.owe(v, offset, offset + length);
      } finally {
        this.end(v, first, last);
      }
    } finally {
      unlock();
    }
  }

  async flush(name: string): Promise<void> {
    const v = this.vol(name);
    v.log.sync(true); // the log is durable before the data it covers can be
    await v.spec.target.flush();
    if (this.ready && this.caps & Cap.FLUSH) this.send([encodeFlush(this.sentSeq)]);
  }

  private vol(name: string): AgentVolume {
    const v = this.byName.get(name);
    if (!v) throw new Error(`no protected volume ${name}`);
    return v;
  }

  private mirror(v: AgentVolume, offset: number, data: Buffer | Buffer[], len: number): void {
    this.stats.writes++;
    if (!this.ready || v.id < 0) return; // not protected now: the dirty log has it
    const sock = this.sock!;
    if (sock.writableLength + len > this.o.maxQueueBytes || this.pending.length - this.pendingHead >= this.o.maxPendingWrites) {
      this.stats.overflowWrites++;
      this.owe(v, offset, offset + len);
      return;
    }
    const seq = ++this.sentSeq;
    const bm = v.log.bitmap;
    const first = bm.regionOf(offset), last = bm.regionOf(offset + len - 1);
    this.pending.push({ seq, vol: v, first, last });
    for (let r = first; r <= last; r++) v.regionSeq.set(r, seq);
    const head = encodeProtectedWriteHead(v.id, offset / SECTOR, len / SECTOR, IO_OK);
    const frame = Array.isArray(data) ? [head, ...data] : [head, data];
    const bufs = this.crcOut ? this.sealer.seal(frame) : frame;
    if (!Array.isArray(data) && this.writePool.hold(data)) writeBatchedThen(sock, bufs, () => this.writePool.give(data));
    else writeBatched(sock, ...bufs);
    this.stats.mirroredBytes += len;
  }

  /** A dirty range the hub must hear about by report (overflow, zeroing). */
  private owe(v: AgentVolume, start: number, end: number): void {
    if (!this.ready || v.id < 0) return; // reported in full at the next connection
    v.owed.setBytes(start, end);
    this.scheduleReport(v);
  }

  private reportScheduled = false;
  private scheduleReport(v: AgentVolume): void {
    if (this.reportScheduled) return;
    this.reportScheduled = true;
    setTimeout(() => {
      this.reportScheduled = false;
      for (const vol of this.vols) this.sendOwed(vol);
    }, 10);
  }

  /** Hand owed regions over in a report, once the previous report was acked and there is room. */
  private sendOwed(v: AgentVolume): void {
    if (!this.ready || v.id < 0 || v.handing !== null || v.owed.dirtyRegions === 0) return;
    if (!(this.caps & Cap.DIRTY_REPORT)) { v.owed = new DirtyBitmap(v.owed.sizeBytes, v.owed.regionSize); return; }
    if (this.sock!.writableLength > this.o.maxQueueBytes / 2) { this.scheduleReport(v); return; }
    const owed = v.owed;
    v.owed = new DirtyBitmap(owed.sizeBytes, owed.regionSize);
    this.report(v, owed);
  }

  private report(v: AgentVolume, regions: DirtyBitmap): void {
    v.handing = regions;
    v.reportId = (v.reportId + 1) >>> 0;
    const rs = regions.regionSize;
    const chunks: Extent[][] = [[]];
    let bytes = 0;
    for (const [a, b] of regions.runs()) {
      const start = a * rs, end = Math.min(b * rs, regions.sizeBytes);
      if (chunks[chunks.length - 1].length === Limits.maxExtents) chunks.push([]);
      chunks[chunks.length - 1].push({ offsetSectors: start / SECTOR, sizeSectors: (end - start) / SECTOR });
      bytes += end - start;
    }
    v.acksAwaited = chunks.length;
    chunks.forEach((c, i) => this.send([encodeDirtyReport(v.id, v.reportId, i === chunks.length - 1 ? DIRTY_FINAL : 0, c)]));
    this.stats.reportedBytes += bytes;
    this.log.info({ volume: v.name, extents: chunks.reduce((s, c) => s + c.length, 0), bytes }, 'dirty extents reported to hub');
  }

  // ---- connection ----

  private connect(): void {
    if (this.stopping) return;
    const secure = this.opts.tls;
    const sock: net.Socket = secure ? tls.connect({ host: this.o.hubHost, port: this.o.hubPort, ...secure }) : net.connect({ host: this.o.hubHost, port: this.o.hubPort });
    this.sock = sock;
    sock.setNoDelay(true);
    sock.setKeepAlive(true, 10_000);
    const framer = new FrameDecoder((cmd, payload) => this.receive(cmd, payload));
    // TCP connect, TLS handshake and HELLO must all complete in time: a black-holed dial must
    // not leave the agent waiting forever.
    const deadline = setTimeout(() => {
      if (this.sock === sock && !this.ready) {
        this.log.warn({ hub: `${this.o.hubHost}:${this.o.hubPort}`, ms: 3 * this.o.heartbeatMs }, 'hub handshake timed out; dialing again');
        sock.destroy();
      }
    }, 3 * this.o.heartbeatMs);
    deadline.unref();
    sock.once('close', () => clearTimeout(deadline));
    sock.on(secure ? 'secureConnect' : 'connect', () => {
      this.stats.connects++;
      this.lastHeard = Date.now();
      this.log.info({ hub: `${this.o.hubHost}:${this.o.hubPort}` }, 'connected to hub');
      sock.write(encodeHello(PROTOCOL_VERSION, this.o.caps, Limits.maxPayload, this.o.vm));
      if (this.o.caps & Cap.PING) this.startHeartbeat(sock);
    });
    sock.on('data', (chunk) => {
      this.lastHeard = Date.now();
      try {
        framer.push(chunk);
      } catch (e) {
        this.log.error({ cause: (e as Error).message }, 'bad frame from hub; reconnecting');
        sock.destroy();
      }
    });
    sock.on('error', (e: NodeJS.ErrnoException) => {
      if (secure && /certificate|self.signed|verify|handshake|alert/i.test(e.message)) {
        this.log.error({ cause: e.message, code: e.code }, 'hub refused or not trusted: TLS verification failed');
      } else this.log.warn({ cause: e.message }, 'hub connection error');
    });
    sock.on('close', () => this.onClose(sock));
  }

  private startHeartbeat(sock: net.Socket): void {
    const ms = this.o.heartbeatMs;
    this.heartbeat = setInterval(() => {
      if (Date.now() - this.lastHeard > 3 * ms) {
        this.log.warn({ silentMs: Date.now() - this.lastHeard }, 'hub silent; dropping connection');
        sock.destroy();
      } else if (this.ready && this.caps & Cap.PING) this.send([encodePing(Date.now())]);
    }, ms);
    this.heartbeat.unref();
  }

  private onClose(sock: net.Socket): void {
    if (this.sock !== sock) return;
    if (this.heartbeat) clearInterval(this.heartbeat);
    this.heartbeat = null;
    const wasReady = this.ready;
    this.ready = false;
    this.sock = null;
    this.byId.clear();
    for (const v of this.vols) v.reset(); // every unacked write stays in the dirty log
    this.pending = [];
    this.pendingHead = 0;
    this.sentSeq = 0; // sequence numbers are per connection (SPEC §7.1)
    this.crcOut = false;
    this.sealer = new FrameSealer(); // a new connection starts a new chain
    this.remoteQueue = [];
    if (this.stopping) return;
    if (wasReady) this.backoff = 100;
    this.log.warn({ retryMs: this.backoff }, 'hub connection lost; VM keeps running, writes are logged as dirty');
    this.reconnectTimer = setTimeout(() => {
      this.reconnectTimer = null;
      this.connect();
    }, this.backoff);
    this.backoff = Math.min(this.backoff * 2, this.o.reconnectMaxMs);
  }

  /** One frame out; `done` runs once the socket no longer needs its buffers (or never took them). */
  private send(bufs: Buffer[], done?: () => void): void {
    const s = this.sock;
    if (!s || s.destroyed) return done?.();
    writeBatchedThen(s, this.crcOut ? this.sealer.seal(bufs) : bufs, done);
  }

  private receive(cmd: number, payload: Buffer): void {
    const m = decode(cmd, payload);
    if (!this.ready && m.cmd !== Cmd.HELLO) {
      // A hub that answers without HELLO speaks the plain seed protocol.
      this.caps = 0;
      this.onReady();
    }
    this.handle(m);
  }

  private onReady(): void {
    this.ready = true;
    this.backoff = 100;
    this.send([encodeReportVmVolumes(this.vols.map((v) => ({ name: v.name, sizeBytes: v.spec.target.sizeBytes })))]);
  }

  private handle(m: Message): void {
    switch (m.cmd) {
      case Cmd.HELLO:
        if (this.ready) throw new ProtocolError('second HELLO from hub');
        this.caps = m.caps & this.o.caps;
        this.crcOut = (this.caps & Cap.FRAME_CRC) !== 0; // our frames after its HELLO carry a CRC
        this.log.info({ hub: m.name, caps: this.caps }, 'hub hello');
        return this.onReady();
      case Cmd.START_PROTECT: {
        const v = this.byName.get(m.name);
        if (!v) { this.log.warn({ volume: m.name }, 'hub asked to protect an unknown volume'); return; }
        v.id = m.volumeId;
        this.byId.set(m.volumeId, v);
        this.log.info({ volume: v.name, volumeId: v.id, dirtyBytes: v.log.bitmap.dirtyBytes }, 'protection started');
        if (this.caps & Cap.DIRTY_REPORT) {
          const snap = new DirtyBitmap(v.log.bitmap.sizeBytes, v.log.bitmap.regionSize);
          for (const [a, b] of v.log.bitmap.runs()) snap.setRegions(a, b - 1);
          this.report(v, snap);
        }
        return;
      }
      case Cmd.WRITE_ACK: return this.onAck(m.seq);
      case Cmd.DIRTY_REPORT_ACK: return this.onReportAck(m.volumeId, m.reportId);
      case Cmd.REMOTE_IO_REQ: return this.remoteIo(m);
      case Cmd.CHECKSUM_REQ: return void this.checksum(m);
      case Cmd.PING: return this.send([encodePong(m.nonce)]);
      case Cmd.PONG: return;
      case Cmd.ERROR:
        this.log.error({ code: m.code, cause: m.message }, 'hub reported an error');
        return;
      default:
        throw new ProtocolError(`unexpected ${Cmd[m.cmd]} from hub`);
    }
  }

  private onAck(seq: number): void {
    if (seq > this.sentSeq) throw new ProtocolError(`WRITE_ACK ${seq} beyond the ${this.sentSeq} writes sent on this connection`);
    // Cleared bits reach the log file at its periodic sync, not per ack (see DirtyLog).
    while (this.pendingHead < this.pending.length && this.pending[this.pendingHead].seq <= seq) {
      const p = this.pending[this.pendingHead++];
      const v = p.vol;
      for (let r = p.first; r <= p.last; r++) {
        if (v.regionSeq.get(r) !== p.seq) continue; // a later write still pends
        v.regionSeq.delete(r);
        if (!v.busy.has(r) && !v.owed.get(r) && !(v.handing && v.handing.get(r))) v.log.clear(r);
      }
    }
    if (this.pendingHead > 4096) {
      this.pending = this.pending.slice(this.pendingHead);
      this.pendingHead = 0;
    }
  }

  private onReportAck(volumeId: number, reportId: number): void {
    const v = this.byId.get(volumeId);
    if (!v || !v.handing || reportId !== v.reportId) return;
    if (--v.acksAwaited > 0) return;
    const h = v.handing;
    v.handing = null;
    for (const [a, b] of h.runs()) {
      for (let r = a; r < b; r++) if (!v.regionSeq.has(r) && !v.busy.has(r) && !v.owed.get(r)) v.log.clear(r);
    }
    v.log.sync();
    this.sendOwed(v);
  }

  private remoteIo(m: RemoteIoReq): void {
    if (this.remoteActive >= this.o.maxRemoteIo) {
      if (this.remoteQueue.length >= 1024) throw new ProtocolError('hub exceeded the remote IO queue limit');
      this.remoteQueue.push(m);
      return;
    }
    this.remoteActive++;
    void this.execRemote(m).finally(() => {
      this.remoteActive--;
      const next = this.remoteQueue.shift();
      if (next) this.remoteIo(next);
    });
  }

  private async execRemote(m: RemoteIoReq): Promise<void> {
    const v = this.byId.get(m.volumeId);
    const offset = m.offsetSectors * SECTOR, len = m.sizeSectors * SECTOR;
    if (!v || offset + len > v.spec.target.sizeBytes) {
      this.log.error({ volumeId: m.volumeId, offset, len }, 'remote IO for unknown volume or out of range');
      this.send([encodeRemoteIoResHead(m.reqId, -22, m.volumeId, 0)]);
      return;
    }
    try {
      if (m.isRead) await this.remoteRead(v, m, offset, len);
      else {
        await v.spec.target.write(m.data, offset);
        this.stats.remoteWrites++;
        this.send([encodeRemoteIoResHead(m.reqId, IO_OK, m.volumeId, 0)]);
      }
    } catch (e) {
      this.log.error({ volume: v.name, offset, len, cause: (e as Error).message }, 'remote IO failed');
      this.send([encodeRemoteIoResHead(m.reqId, -5, m.volumeId, 0)]);
    }
  }

  /**
   * Answer a hub read: holes (SEEK_DATA) are not read at all, and with SPARSE only the chunks
   * holding non-zero data cross the link; an all-zero range is one IO_ZEROES header.
   */
  private async remoteRead(v: AgentVolume, m: RemoteIoReq, offset: number, len: number): Promise<void> {
    const t = v.spec.target;
    const sparse = (this.caps & Cap.SPARSE) !== 0, zeroes = (this.caps & Cap.ZEROES) !== 0;
    const ext = (sparse || zeroes) && this.o.seekData && t.dataExtents ? t.dataExtents(offset, offset + len) : null;
    this.stats.remoteReads++;
    if (ext && ext.length === 0 && zeroes) return this.answerZeroes(m, len);
    const buf = this.readPool.take(len);
    const release = () => this.readPool.give(buf);
    const n = chunkCount(len), useSparse = sparse && n > 1;
    // Chunks that touch a data extent; the others lie in holes: with SPARSE they are neither
    // read nor zeroed, just left out of the answer.
    const holds: boolean[] = [];
    for (let i = 0, e = 0; i < n; i++) {
      const a = offset + i * SPARSE_CHUNK, b = Math.min(a + SPARSE_CHUNK, offset + len);
      while (ext && e < ext.length && ext[e][1] <= a) e++;
      holds.push(!ext || (e < ext.length && ext[e][0] < b));
    }
    if (ext) {
      const zero = (a: number, b: number) => { // a hole the answer may carry reads as zeroes
        if (!useSparse) return void buf.fill(0, a - offset, b - offset);
        for (let i = Math.floor((a - offset) / SPARSE_CHUNK); i * SPARSE_CHUNK < b - offset; i++) {
          if (holds[i]) buf.fill(0, Math.max(a - offset, i * SPARSE_CHUNK), Math.min(b - offset, (i + 1) * SPARSE_CHUNK));
        }
      };
      let at = offset;
      for (const [a, b] of ext) {
        if (a > at) zero(at, a);
        at = b;
      }
      if (at < offset + len) zero(at, offset + len);
      await Promise.all(ext.map(([a, b]) => readBulk(t, buf.subarray(a - offset, b - offset), a)));
      for (const [a, b] of ext) this.stats.remoteDiskBytes += b - a;
    } else {
      await readBulk(t, buf, offset);
      this.stats.remoteDiskBytes += len;
    }
    if (useSparse) {
      const present: boolean[] = [];
      let dataBytes = 0;
      for (let i = 0; i < n; i++) {
        const a = offset + i * SPARSE_CHUNK, b = Math.min(a + SPARSE_CHUNK, offset + len);
        present.push(holds[i] && !isZero(buf.subarray(a - offset, b - offset)));
        if (present[i]) dataBytes += b - a;
      }
      if (dataBytes === 0 && zeroes) { release(); return this.answerZeroes(m, len); }
      if (dataBytes < len) {
        const parts = [encodeRemoteIoResHead(m.reqId, IO_SPARSE, m.volumeId, SPARSE_MAP_BYTES + dataBytes), encodeSparseMap(present)];
        for (let i = 0; i < n; i++) if (present[i]) parts.push(buf.subarray(i * SPARSE_CHUNK, Math.min((i + 1) * SPARSE_CHUNK, len)));
        this.stats.remoteReadBytes += dataBytes;
        this.stats.remoteZeroBytes += len - dataBytes;
        this.send(parts, release);
        return;
      }
    } else if (zeroes && isZero(buf)) { release(); return this.answerZeroes(m, len); }
    this.stats.remoteReadBytes += len;
    this.send([encodeRemoteIoResHead(m.reqId, IO_OK, m.volumeId, len), buf], release);
  }

  private answerZeroes(m: RemoteIoReq, len: number): void {
    this.stats.remoteZeroBytes += len; // nothing crosses the link for a hole
    this.send([encodeRemoteIoResHead(m.reqId, IO_ZEROES, m.volumeId, 0)]);
  }

  private async checksum(m: ChecksumReq): Promise<void> {
    const v = this.byId.get(m.volumeId);
    const rs = m.regionSectors * SECTOR, start = m.offsetSectors * SECTOR;
    if (!v || start + rs * m.count > v.spec.target.sizeBytes) {
      this.send([encodeChecksumRes(m.reqId, -22, m.volumeId, Buffer.alloc(0))]);
      return;
    }
    const out = Buffer.allocUnsafe(m.count * CHECKSUM_BYTES);
    const buf = Buffer.allocUnsafe(rs);
    try {
      for (let i = 0; i < m.count; i++) {
        await readBulk(v.spec.target, buf, start + i * rs);
        createHash('sha256').update(buf).digest().copy(out, i * CHECKSUM_BYTES, 0, CHECKSUM_BYTES);
      }
      this.send([encodeChecksumRes(m.reqId, IO_OK, m.volumeId, out)]);
    } catch {
      this.send([encodeChecksumRes(m.reqId, -5, m.volumeId, Buffer.alloc(0))]);
    }
  }

  // ---- status and shutdown ----

  status() {
    return {
      vm: this.o.vm, connected: this.ready, caps: this.caps,
      queueBytes: this.sock?.writableLength ?? 0, pendingWrites: this.pending.length - this.pendingHead,
      volumes: this.vols.map((v) => ({ name: v.name, volumeId: v.id, sizeBytes: v.spec.target.sizeBytes, dirtyBytes: v.log.bitmap.dirtyBytes, logDirtyBytes: v.log.persistedDirtyBytes })),
      ...this.stats,
    };
  }

  /** Clean stop: wait (bounded) for outstanding acks, send AGENT_SHUTDOWN, close. */
  async stop(timeoutMs = 5000): Promise<void> {
    this.stopping = true;
    clearInterval(this.syncTimer);
    if (this.reconnectTimer) clearTimeout(this.reconnectTimer);
    const until = Date.now() + timeoutMs;
    while (this.ready && (this.pendingHead < this.pending.length || this.vols.some((v) => v.handing)) && Date.now() < until) {
      await new Promise((r) => setTimeout(r, 5));
    }
    const sock = this.sock;
    if (sock && !sock.destroyed) {
      if (this.ready) this.send([encodeAgentShutdown()]);
      await new Promise<void>((res) => {
        sock.end(() => res());
        setTimeout(res, 1000).unref();
      });
      sock.destroy();
    }
    if (this.heartbeat) clearInterval(this.heartbeat);
    for (const v of this.vols) v.log.sync(true);
  }
}
