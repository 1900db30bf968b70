// One agent connection on the hub, transport-agnostic: frames in through receive(), frames out
// through a Link over the Transport. Owns intake and dispatch (the inline fast path for a
// protected write with nothing queued before it), the handshake and the session's lifecycle;
// the apply queue, group commit, sync engine, attach and failback each own their own part.
// What could leave has: the transport's adapter (transport.ts), the handshake (handshake.ts),
// the direction and capability checks (receive-rules.ts), VOLUME_SIZE's landing
// (volume-resize.ts), the POINT requests (point-request.ts), a read's small-write batch
// (inline-batch.ts; its hooks stay here because that batch must see every frame as it is
// dispatched).
import { Cmd, Cap, ALL_CAPS, ErrorCode, decode, Message } from '../../protocol';
import { ProtocolError, encodeError, encodeStopProtect } from '../../protocol';
import type { ProtectedWrite } from '../../protocol';
import type { DirtyBitmap } from '../../storage/bitmap';
import type { Logger } from '../log';
import type { BufferPool } from '../buffer-pool';
import { Link } from '../link/link';
import { Transport, transportIo } from './transport';
import type { FailbackWatcher, Replica, ReplicaOwner, TargetOpener } from './replica';
import { ApplyQueue, owned } from './apply-queue';
import { GroupCommit } from './group-commit';
import { PointRequests } from './point-request';
import { SyncEngine, VolumeSync } from './sync';
import { WriteApplier } from './write-apply';
import { InlineBatch } from './inline-batch';
import { VolumeAttach } from './attach';
import { WriteBack } from './failback';
import { checkIntake } from './receive-rules';
import { Handshake, HandshakeHost } from './handshake';
import { VerifyEngine, VerifyPacer } from './verify';
import type { ResyncRateLimit } from './resync-rate';
import { ResizeResult, SizeQueries } from './volume-resize';
import { VolumeRefused } from './volume-set';

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
  /** --max-resync-rate: one limit shared by every session of the hub (resync-rate.ts); none when absent. */
  resyncRate?: ResyncRateLimit;
}

export const defaultSessionConfig: SessionConfig = {
  hubName: 'rephub',
  caps: ALL_CAPS,
  maxInflightReads: 16,
  maxReadBytes: 1 << 20,
  maxQueueBytes: 64 << 20,
  checkpointMs: 5000,
  heartbeatMs: 2000,
  handshakeMs: 10_000,
  commitIntervalMs: 5,
};

export interface SessionHost {
  replica(name: string): Replica | undefined;
  openTarget: TargetOpener;
  /** Where large received frames were joined (see hub.ts); their payloads go back once applied. */
  pool?: BufferPool;
  /** The hub's verify scan-rate limit, shared by its sessions (none when absent). */
  verifyPacer?: VerifyPacer;
  /** The agent's FLUSH marker was applied (a journal checkpoint, src/hub/journal.ts). */
  onFlushMarker?(vm: string): Promise<void> | void;
  /** The agent's POINT (the answer to points.ask()) was applied: a journal point (SPEC.md 7.4). */
  onPointMarker?(vm: string): Promise<void> | void;
  /** The agent said who it is (HELLO), or sent a legacy first frame (the hub's event bus). */
  onHello?(s: AgentSession): void;
}

export class AgentSession implements ReplicaOwner {
  bytesReceived = 0;
  readonly started = Date.now();
  private closed = false;
  /** Set while the transport is gone and what it delivered is applied; resolves once the replicas are let go. */
  ending: Promise<void> | null = null;
  private detaching: Promise<void> | null = null; // detach() once: later calls wait for the first
  private cleanShutdown = false;
  private shutDown = false; // AGENT_SHUTDOWN received: nothing but PING/PONG/ERROR may follow
  private readonly link: Link;
  private readonly hs: Handshake;
  private readonly queue: ApplyQueue;
  private readonly commit: GroupCommit;
  private readonly sync: SyncEngine;
  private readonly writes: WriteApplier;
  private readonly batch: InlineBatch | null; // a read's small writes, held to its end (Transport.endsReads)
  private readonly attach: VolumeAttach;
  private readonly writeBacks: WriteBack;
  private readonly sizes: SizeQueries;
  /** Online verify of this session's volumes (verify.ts); the hub starts runs on it. */
  readonly verifier: VerifyEngine;
  private readonly checkpointTimer: NodeJS.Timeout;
  /** Where the journal may take its next point other than a flush (point-request.ts). */
  readonly points: PointRequests;

  constructor(
    readonly id: number,
    private readonly host: SessionHost,
    private readonly t: Transport,
    private readonly cfg: SessionConfig,
    private readonly log: Logger,
    /** Who the link authenticated (certificate CN or PSK identity); null on a plaintext link. */
    readonly identity: string | null = null,
  ) {
    this.link = new Link(transportIo(t), {
      caps: cfg.caps,
      heartbeatMs: cfg.heartbeatMs,
      name: cfg.hubName,
      onDead: (silent) =>
        this.fail(new ProtocolError(`agent silent for ${silent} ms: connection presumed dead`, ErrorCode.TIMEOUT)),
    });
    this.hs = new Handshake(this.link, identity, cfg.handshakeMs, this.handshakeHost(), log);
    this.queue = new ApplyQueue(
      {
        apply: (m) => this.apply(m),
        applied: (payload) => this.host.pool?.give(payload),
        idle: () => {
          this.commit.kick();
          this.sync.pump();
        },
        failed: (e) => this.fail(e),
        pause: (p) => {
          this.link.pauseReceive(p);
          this.t.pause(p);
        },
      },
      cfg.maxQueueBytes,
    );
    this.points = new PointRequests(this.link, this.queue, log, () => this.vm);
    this.commit = new GroupCommit(this.link, cfg.commitIntervalMs, (e) => this.fail(e));
    this.sync = new SyncEngine(this.link, cfg, log, (e) => this.fail(e));
    this.writes = new WriteApplier(this.sync, this.commit);
    this.batch = t.endsReads ? new InlineBatch(this.writes, (m, payload) => this.landInline(m, payload)) : null;
    this.attach = new VolumeAttach(
      {
        owner: this,
        replica: (n) => host.replica(n),
        openTarget: host.openTarget,
        send: (bufs) => this.link.send(bufs),
        isClosed: () => this.closed,
        attached: (sync) => this.sync.add(sync),
        lineage: (name) => this.hs.lineage(name),
      },
      log,
    );
    this.writeBacks = new WriteBack(
      {
        send: (bufs) => this.link.send(bufs),
        nextReqId: () => this.sync.allocReqId(),
        isClosed: () => this.closed,
      },
      cfg.maxInflightReads,
      cfg.maxReadBytes,
    );
    this.sizes = new SizeQueries((bufs) => this.link.send(bufs), host.openTarget, log);
    // One req_id sequence for every request, so a CHECKSUM_RES finds its engine (resync or verify).
    const pacer = host.verifyPacer ?? new VerifyPacer(0);
    this.verifier = new VerifyEngine(this.link, pacer, log, () => this.sync.allocReqId());
    this.checkpointTimer = setInterval(() => void this.sync.checkpoint(), cfg.checkpointMs);
    this.checkpointTimer.unref();
  }

  private handshakeHost(): HandshakeHost {
    return {
      greeted: () => this.host.onHello?.(this),
      requireChecksums: () => this.t.requireChecksums?.(),
      fail: (e) => this.fail(e),
    };
  }

  /** The VM's name (the handshake's): '' before HELLO on a plaintext link. */
  get vm(): string {
    return this.hs.vm;
  }

  /** The agent process's instance id (cap IDENTITY), hex; null without it. */
  get instance(): string | null {
    return this.hs.instance;
  }

  /** The agent's address, as a refusal names who holds a volume. */
  get peer(): string {
    return this.t.peer ?? 'an unknown address';
  }

  /** Capabilities agreed with the agent (0 before its HELLO, and for a legacy agent). */
  get caps(): number {
    return this.link.caps;
  }

  get volumes(): VolumeSync[] {
    return this.sync.list();
  }

  rpoLagMs(): number {
    return this.commit.rpoLagMs();
  }

  /** Resync bytes per second received lately, and the hub's cap (0: none). */
  resyncStatus() {
    const limit = this.cfg.resyncRate;
    return { rateBytesPerSec: this.sync.meter.rate(Date.now()), maxRateBytesPerSec: limit ? limit.bytesPerSecond : 0 };
  }

  /** Every frame of a read was received: the small writes it held are applied now. */
  endOfRead(): void {
    this.batch?.flush();
  }

  /** One complete frame from the framer. Throws ProtocolError for a bad one. */
  receive(cmd: number, payload: Buffer): void {
    if (this.closed) return;
    this.link.heard();
    this.bytesReceived += payload.length;
    // Only a protected write arriving with nothing queued may be applied at once (applyNow);
    // any other frame that reaches the queue gets its own copy first (owned()), and comes after
    // the writes the batch holds.
    const inline = cmd === Cmd.PROTECTED_WRITE && this.queue.idle;
    if (!inline) {
      this.batch?.flush();
      payload = owned(payload);
    }
    const msg = decode(cmd, payload);
    this.hs.arrived(msg);
    if (this.shutDown || msg.cmd !== Cmd.PROTECTED_WRITE) checkIntake(msg.cmd, this.caps, this.shutDown);
    if (msg.cmd === Cmd.AGENT_SHUTDOWN) this.shutDown = true;
    switch (msg.cmd) {
      case Cmd.HELLO:
        return this.hs.hello(msg);
      case Cmd.PING:
        return this.link.pong(msg.nonce);
      case Cmd.PONG:
        return;
      case Cmd.IDENTITY: // session metadata, before any report: kept at once, never queued
        return this.hs.identify(msg);
      case Cmd.REPORT_VM_VOLUMES:
        this.hs.reportArrived();
        break;
      case Cmd.ERROR:
        this.log.warn({ vm: this.vm, code: msg.code, cause: msg.message.slice(0, 256) }, 'agent reported an error');
        return;
      case Cmd.PROTECTED_WRITE:
        this.commit.receive();
        if (!inline) break;
        if (!this.batch?.add(msg, payload)) this.landInline(msg, payload); // else applied at the read's end
        return;
    }
    this.queue.push(msg, payload);
  }

  /** A write that arrived with nothing queued: applied now, or queued behind what got there first. */
  private landInline(msg: ProtectedWrite, payload: Buffer): void {
    if (this.closed) return this.host.pool?.give(payload);
    if (this.queue.idle && this.writes.applyNow(msg)) {
      this.host.pool?.give(payload);
      this.commit.kick();
      this.sync.pumpSoon();
      return;
    }
    const own = owned(payload); // queued after all (rare): failover, a view, a large write
    this.queue.push(own === payload ? msg : decode(Cmd.PROTECTED_WRITE, own), own);
  }

  /** Apply one frame from the queue, in stream order. */
  private async apply(m: Message): Promise<void> {
    switch (m.cmd) {
      case Cmd.REPORT_VM_VOLUMES:
        this.hs.reported();
        return this.attach.report(m, this.vm, this.trustsReports);
      case Cmd.PROTECTED_WRITE:
        return this.writes.apply(m);
      case Cmd.REMOTE_IO_RES:
        if (this.writeBacks.settle(m)) return;
        return this.sync.onRemoteIoRes(m);
      case Cmd.DIRTY_REPORT:
        return this.sync.onDirtyReport(m);
      case Cmd.FLUSH: {
        // the queue runs its flush hooks after this; a point may wait for before-images (RBD)
        const marked = this.host.onFlushMarker?.(this.vm);
        return marked ? marked.then(() => this.commit.guestFlushed()) : this.commit.guestFlushed();
      }
      case Cmd.POINT: // no flush: a point of the stream the agent vouches for, not a guest flush
        this.points.answered();
        return this.host.onPointMarker?.(this.vm);
      case Cmd.AGENT_SHUTDOWN:
        return this.onShutdown();
      case Cmd.VOLUME_SIZE:
        return this.sizes.answered(m.volumeId, this.sync.volume(m.volumeId, 'VOLUME_SIZE').replica, m.sizeBytes);
      case Cmd.CHECKSUM_RES:
        if (this.sync.ownsChecksum(m.reqId)) return this.sync.onChecksumRes(m);
        return this.verifier.onChecksumRes(m);
      default:
        throw new ProtocolError(`unexpected ${Cmd[m.cmd] ?? m.cmd}`);
    }
  }

  private async onShutdown(): Promise<void> {
    this.cleanShutdown = true;
    this.sync.stop();
    this.log.info({ vm: this.vm }, 'agent shutdown');
    await this.commit.flushNow();
    for (const sync of this.sync.list()) {
      if (!sync.replica.failover) await sync.replica.stopCleanly();
    }
  }

  barrier<T>(fn: () => Promise<T> | T): Promise<T> {
    return this.queue.barrier(fn);
  }

  /** Failback of `replica`'s `regions`; waits for an attach of it still being applied. */
  async writeBack(replica: Replica, regions: DirtyBitmap, watch: FailbackWatcher): Promise<number> {
    let sync = this.sync.of(replica);
    if (!sync) sync = await this.queue.barrier(() => this.sync.of(replica));
    if (!sync) throw new Error(`volume ${replica.name} is not attached to the agent session of VM ${this.vm}`);
    return this.writeBacks.run(replica, sync.volumeId, regions, watch);
  }

  pump(): void {
    for (const v of this.sync.list()) v.settle(); // a volume resumed with nothing dirty is protecting at once
    this.sync.pump();
  }

  /** The agent will hand over its own dirty extents (DIRTY_REPORT and WRITE_ACK agreed). */
  private get trustsReports(): boolean {
    return this.link.has(Cap.DIRTY_REPORT) && this.link.has(Cap.WRITE_ACK);
  }

  /** Ask the agent for `replica`'s size; its answer, applied in stream order, grows it (volume-resize.ts). */
  askSize(replica: Replica): Promise<ResizeResult> {
    const sync = this.sync.of(replica);
    if (!sync || this.closed) return Promise.reject(new VolumeRefused(`volume ${replica.name} is not attached here`));
    if (!this.link.has(Cap.RESIZE))
      return Promise.reject(
        new VolumeRefused(`the agent of VM ${this.vm} cannot resize online (no RESIZE capability)`),
      );
    return this.sizes.ask(sync.volumeId, replica);
  }

  /** A volume was added to the hub (volume-set.ts): attach it if this agent reported it, in stream order. */
  offer(name: string): Promise<boolean> {
    if (this.closed) return Promise.resolve(false);
    return this.queue.barrier(() => this.attach.offer(name, this.vm, this.trustsReports));
  }

  /**
   * The operator removed `replica` (volume-set.ts): at this point of the write stream the session
   * lets go of it and tells the agent to stop mirroring it; later frames for its id are dropped.
   */
  async removeVolume(replica: Replica): Promise<void> {
    if (this.closed) return;
    await this.queue.barrier(() => {
      const sync = this.sync.of(replica);
      if (!sync) return;
      this.sync.retire(sync);
      this.attach.forget(replica);
      const ctx = { vm: this.vm, volume: replica.name, volumeId: sync.volumeId }; // this.log names the session
      if (this.link.has(Cap.STOP_PROTECT)) {
        this.link.send([encodeStopProtect(sync.volumeId, replica.name)]);
        this.log.info(ctx, 'agent told to stop mirroring the removed volume (STOP_PROTECT)');
      } else {
        this.log.warn(
          ctx,
          'agent lacks STOP_PROTECT: its writes of the removed volume are dropped until it reconnects',
        );
      }
    });
  }

  /** Protocol or internal failure: tell the peer, close this session only. */
  fail(e: Error): void {
    if (this.closed) {
      // applying what the ended connection delivered (detach): nothing after this is applied
      if (this.ending) this.log.error({ vm: this.vm, cause: e.message }, 'failed after the connection ended');
      return;
    }
    const code = e instanceof ProtocolError ? e.code : ErrorCode.IO;
    this.log.error({ vm: this.vm, cause: e.message }, 'closing agent session');
    try {
      this.link.send([encodeError(code, e.message)]);
    } catch {
      /* transport already gone */
    }
    this.link.close(e);
    void this.detach(false);
  }

  /**
   * The transport is gone. The frames it delivered are applied first, unless the session failed
   * (`finishQueued` false: the stream is not to be trusted past its fault). Volumes not cleanly
   * shut down then become degraded; their bits stay.
   */
  detach(finishQueued = true): Promise<void> {
    return (this.detaching ??= this.letGo(finishQueued));
  }

  private async letGo(finishQueued: boolean): Promise<void> {
    this.closed = true; // no frame is taken and nothing new is asked of the agent from here
    clearInterval(this.checkpointTimer);
    this.hs.stop();
    this.link.stop(); // sends are dropped: an ack or a request now would reach nobody
    this.sync.stop();
    this.verifier.hold();
    const acked = this.commit.acked; // what the agent can have heard: later acks go nowhere
    // The answers queued still find their requests (verify, write-backs, sizes) until it is done.
    let ended = () => {};
    let released: Promise<unknown>;
    try {
      if (finishQueued) {
        this.ending = new Promise<void>((r) => (ended = r));
        await this.queue.finish();
      }
      this.verifier.stop();
      this.commit.close();
      this.writeBacks.cancel(new Error('agent session closed'));
      this.sizes.cancel();
      const inFlight = this.queue.close(); // leftover barriers run once it is done
      released = this.attach.release(inFlight, this.cleanShutdown);
    } finally {
      ended(); // a reconnect waiting for these volumes goes on, whatever happened here
    }
    this.log.info(
      {
        vm: this.vm,
        clean: this.cleanShutdown,
        received: this.commit.received,
        acked,
      },
      'agent session closed',
    );
    await released;
  }
}
