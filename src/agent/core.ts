// The agent without a socket: the protected volumes, the write path, the mirror, the dirty-report
// hand-over, remote IO and the backlog bound, wired together. The connection hands it a link once capabilities are
// agreed (connected), the hub's messages (receive), and the end of the connection (disconnected);
// the property test drives it the same way over an in-memory link.
import { randomBytes } from 'node:crypto';
import {
  Cap,
  Cmd,
  ErrorCode,
  Message,
  ProtocolError,
  encodeReportVmVolumes,
  encodeAgentShutdown,
  encodePing,
  encodeVolumeSize,
  SECTOR,
} from '../../protocol';
import { encodeIdentity } from '../../protocol';
import { pingNonce } from '../link/ping-nonce';
import type { BufferPool } from '../buffer-pool';
import type { Logger } from '../log';
import { VolumeTable, AgentVolume, AgentVolumeSpec } from './volume';
import { RegionGate } from './region-gate';
import { Mirror, MirrorLimits } from './mirror';
import { Handover } from './handover';
import { RemoteIo, RemoteIoOptions } from './remote-io';
import { WritePath } from './write-path';
import type { AgentStats, LinkPort } from './ports';
import { Refusals } from './refusals';
import { LinkPacer, PacerOptions } from '../link/pacer';
import { ResyncGovernor, GovernorOptions } from './resync-governor';
import { AckLag, SAMPLE_MS } from './ack-lag';
import { LagBound } from './lag-bound';
import { SyncFlushPolicy } from './sync-flush';

/** `pacer`: the --max-rate cap on the link; none: frames go straight to the link. */
/** `clock`: the resync governor's timers (tests: a simulation's virtual time releases held answers). */
/** `maxLagMs`: --max-lag, the backlog bound (lag-bound.ts); absent or 0: off. */
/** `loopFlushMaxMs`: --loop-flush-max (sync-flush.ts); absent: the default, 0: never on the loop. */
export type CoreOptions = MirrorLimits &
  RemoteIoOptions & {
    pacer?: PacerOptions;
    clock?: Pick<GovernorOptions, 'now' | 'setTimer' | 'clearTimer'>;
    maxLagMs?: number;
    loopFlushMaxMs?: number;
  };

const FLOOR_RATE = 1 << 20; // resync's least rate without --max-rate (DRBD's c-min-rate is 250 KiB/s)

export class AgentCore {
  readonly volumes: VolumeTable;
  readonly writes: WritePath;
  private readonly mirror: Mirror;
  private readonly handover: Handover;
  private readonly remoteIo: RemoteIo;
  private link: LinkPort | null = null;
  /** This agent process, as the hub tells a reconnect from another live agent (cap IDENTITY). */
  readonly instanceId = randomBytes(16);
  private readonly refusals: Refusals;
  private readonly pacer: LinkPacer | null;
  private readonly governor: ResyncGovernor;
  /** The link as remote IO sees it: its answers go through the governor (sendBulk). */
  private bulkLink: LinkPort | null = null;
  private readonly ackLag = new AckLag();
  private lagTimer: NodeJS.Timeout | null = null; // while connected: a core left disconnected holds no timer
  private readonly lagBound: LagBound;

  constructor(
    specs: AgentVolumeSpec[],
    opts: CoreOptions,
    writePool: BufferPool,
    private readonly log: Logger,
    readonly stats: AgentStats,
  ) {
    this.volumes = new VolumeTable(specs);
    const gate = new RegionGate();
    this.handover = new Handover(this.volumes, gate, opts.maxQueueBytes, log, stats);
    this.mirror = new Mirror(this.volumes, gate, this.handover, opts, writePool, stats);
    const mirror = this.mirror,
      handover = this.handover;
    this.lagBound = new LagBound(
      {
        // applied, not durable (cap APPLIED; without it the same as acked): the copies are equal
        // once the hub applied, and the guest is not paced to the hub's fdatasyncs
        unackedBytes: () => mirror.unappliedBytes,
        owedBytes: (now) => handover.unreadBytes(now, this.lagBound.waitCapMs),
        drainedBytes: () => mirror.appliedBytes + handover.answeredBytes,
        baseRttMs: () => this.governor.baseRttMs,
        queuedBytes: () => this.link?.queuedBytes() ?? 0,
      },
      {
        maxLagMs: opts.maxLagMs ?? 0,
        queueHoldBytes: opts.maxQueueBytes / 2, // before writes overflow into owed regions
        onHolding: () => this.governor.kick(),
      },
    );
    const bound = this.lagBound;
    const syncFlush = new SyncFlushPolicy(stats, opts.loopFlushMaxMs);
    this.writes = new WritePath(this.volumes, this.mirror, this.handover, bound, syncFlush);
    const readBacks = {
      readBack: (v: AgentVolume, start: number, end: number) => {
        handover.readBack(v, start, end);
        bound.update();
      },
    };
    this.remoteIo = new RemoteIo(this.volumes, opts, log, stats, this.writes, readBacks);
    handover.holesIn = (v, regions) => this.remoteIo.holesIn(v, regions);
    mirror.queueHoldBytes = bound.queueHoldBytes;
    mirror.queueHigh = () => void (bound.over || bound.update()); // held already: the slow path updates it
    gate.watch(this.writes);
    gate.watch(this.mirror);
    gate.watch(this.handover);
    this.refusals = new Refusals(log, () => this.report(true));
    const p = opts.pacer;
    this.pacer = p ? new LinkPacer(p) : null;
    this.governor = new ResyncGovernor({
      floorRate: p ? Math.max(64 << 10, p.resyncShare * p.maxRate) : FLOOR_RATE,
      ceilRate: p ? p.maxResyncRate || p.maxRate : 0,
      guestWrites: () => stats.writes,
      guestBytes: () => stats.mirroredBytes,
      guestHeld: () => this.lagBound.over,
      // Under --max-rate a PING goes through the pacer's writes class, answers through its
      // resync class: a PING is not behind the answers it follows, so no ACK-clocked opening.
      opening: !p,
      ...opts.clock,
    });
  }

  /** The ack lag and the backlog bound are sampled every SAMPLE_MS while connected. */
  private readonly sampleLag = (): void => {
    if (this.link === null) return;
    this.ackLag.sample(this.mirror.sent, Date.now());
    this.lagBound.sample();
    // Holding: a PONG tells a live hub whose disk is slow from a stalled link (lag-bound.ts).
    if (this.lagBound.over && this.link.has(Cap.PING)) this.link.send([encodePing(pingNonce())]);
    else if (this.mirror.unappliedBytes === 0 && this.link.queuedBytes() === 0) this.governor.linkIdle();
  };

  private stopSampling(): void {
    if (this.lagTimer) clearInterval(this.lagTimer);
    this.lagTimer = null;
  }

  /** Age of the oldest mirrored write the hub has not acked (ms), link queue included. */
  ackLagMs(): number {
    return this.ackLag.lagMs(this.mirror.oldestPending, Date.now());
  }

  /** Capabilities are agreed (or the hub is legacy): name our volumes; the hub answers START_PROTECT. */
  connected(direct: LinkPort): void {
    const link = this.pacer ? this.pacer.attach(direct) : direct;
    this.link = link;
    this.stopSampling();
    this.lagTimer = setInterval(this.sampleLag, SAMPLE_MS);
    this.lagTimer.unref();
    const gov = this.governor;
    this.bulkLink = {
      send: (bufs, done) => link.send(bufs, done),
      sendBulk: (bufs, done) => gov.send(link, bufs, done),
      queuedBytes: () => link.queuedBytes(),
      has: (cap) => link.has(cap),
    };
    gov.probe = link.has(Cap.PING)
      ? (at) => {
          const nonce = pingNonce(at);
          link.send([encodePing(nonce)]);
          return nonce;
        }
      : null;
    gov.attach(); // its base PING first, on the idle link
    this.mirror.attach(link);
    this.handover.attach(link);
    this.lagBound.attach(link.has(Cap.APPLIED));
    if (!link.has(Cap.APPLIED) && this.lagBound.maxLagMs > 0)
      this.log.warn(
        { maxLagMs: this.lagBound.maxLagMs },
        'hub without WRITE_APPLIED: --max-lag drains on its durable acks, pacing the guest to its fdatasyncs (--max-lag 0 to turn the bound off)',
      );
    if (link.has(Cap.IDENTITY)) {
      // Before the report: the hub compares identities before it answers (SPEC.md 5.16).
      const ids = this.volumes.list.map((v) => ({ name: v.name, lineage: v.log.lineage }));
      link.send([encodeIdentity(this.instanceId, ids)]);
    }
    this.report(false);
  }

  /** REPORT_VM_VOLUMES of every volume (`unprotectedOnly`: those not protected yet); false if none. */
  private report(unprotectedOnly: boolean): boolean {
    if (this.link === null) return false;
    const vols = this.volumes.list.filter(
      (v) => !unprotectedOnly || (this.volumes.hubId(v) < 0 && !this.volumes.isRemoved(v)),
    );
    if (vols.length === 0) return false;
    this.link.send([encodeReportVmVolumes(vols.map((v) => ({ name: v.name, sizeBytes: v.sizeBytes })))]);
    return true;
  }

  /** The connection is gone: everything per connection starts over; the dirty log keeps the rest. */
  disconnected(): void {
    this.link = null;
    this.stopSampling();
    this.refusals.reset();
    this.volumes.reset();
    this.mirror.detach();
    this.handover.detach();
    this.lagBound.detach();
    this.remoteIo.detach();
    this.governor.detach();
    this.ackLag.reset();
    this.pacer?.detach();
    this.bulkLink = null;
  }

  /** A PONG: the round trip of a PING is the resync governor's delay sample. */
  pong(nonce: number): void {
    this.lagBound.heard();
    this.governor.sample(nonce);
  }

  get isConnected(): boolean {
    return this.link !== null;
  }

  /** A message from the hub after the handshake (HELLO, PING and PONG are the connection's). */
  receive(m: Message): void {
    const link = this.link;
    if (link === null) throw new ProtocolError(`${Cmd[m.cmd]} from hub before the handshake`);
    this.lagBound.heard();
    switch (m.cmd) {
      case Cmd.START_PROTECT:
        return this.startProtect(m.name, m.volumeId);
      case Cmd.STOP_PROTECT:
        return this.stopProtect(m.name, m.volumeId);
      case Cmd.VOLUME_SIZE:
        return this.volumeSize(link, m.volumeId);
      case Cmd.WRITE_ACK:
        this.mirror.onAck(m.seq);
        this.lagBound.update();
        return;
      case Cmd.WRITE_APPLIED:
        if (!link.has(Cap.APPLIED)) throw new ProtocolError('WRITE_APPLIED from hub without the APPLIED capability');
        this.mirror.onApplied(m.seq);
        this.lagBound.update();
        return;
      case Cmd.DIRTY_REPORT_ACK:
        this.handover.onReportAck(m.volumeId, m.reportId);
        return this.mirror.retryPoint(); // the owed regions behind that report may leave now
      case Cmd.POINT:
        if (!link.has(Cap.POINT)) throw new ProtocolError('POINT from hub without the POINT capability');
        return this.mirror.pointRequested();
      case Cmd.REMOTE_IO_REQ:
        return this.remoteIo.request(this.bulkLink ?? link, m);
      case Cmd.CHECKSUM_REQ:
        return void this.remoteIo.checksum(this.bulkLink ?? link, m);
      case Cmd.ERROR:
        if (m.code === ErrorCode.VOLUME_REFUSED) return this.refusals.refused(m.code, m.message);
        if (m.code === ErrorCode.UNAUTHORIZED) this.refusals.note(m.code, m.message);
        this.log.error({ code: m.code, cause: m.message }, 'hub reported an error');
        return;
      default:
        throw new ProtocolError(`unexpected ${Cmd[m.cmd]} from hub`);
    }
  }

  private startProtect(name: string, volumeId: number): void {
    const v = this.volumes.find(name);
    if (!v) {
      this.log.warn({ volume: name }, 'hub asked to protect an unknown volume');
      return;
    }
    this.volumes.protect(v, volumeId);
    this.refusals.protectedNow(v.name);
    this.log.info({ volume: v.name, volumeId, dirtyBytes: v.log.bitmap.dirtyBytes }, 'protection started');
    this.handover.protectStarted(v);
  }

  /**
   * The operator removed the volume from protection on the hub: no more mirroring of it on this
   * connection (its writes stay in the dirty log, as for any unprotected volume), and no report
   * of it again until the next connection. Its other volumes go on.
   */
  private stopProtect(name: string, volumeId: number): void {
    const v = this.volumes.withHubId(volumeId);
    if (!v || v.name !== name) {
      this.log.warn({ volume: name, volumeId }, 'hub stopped protection of a volume not protected here; ignored');
      return;
    }
    this.volumes.unprotect(v);
    this.log.warn(
      { volume: v.name, volumeId, dirtyBytes: v.log.bitmap.dirtyBytes },
      'hub removed the volume from protection; no longer mirrored (the dirty log keeps recording its writes)',
    );
  }

  /**
   * The hub asks for the volume's size (an online resize, SPEC.md 5.18). An image that grew
   * underneath is taken now, before anything else is sent: the dirty log and the hand-over map
   * cover the new regions, and the answer goes out ahead of any write to the new space.
   */
  private volumeSize(link: LinkPort, volumeId: number): void {
    const v = this.volumes.withHubId(volumeId);
    if (!v) return link.send([encodeVolumeSize(volumeId, 0)]);
    const before = v.sizeBytes;
    const grow = (v.target as { refreshSize?: (align: number) => number }).refreshSize;
    const found = grow ? grow.call(v.target, SECTOR) : before;
    const ctx = { volume: v.name, volumeId, sizeBytes: before, imageBytes: found };
    if (v.sizeBytes > before) {
      v.log.grow(v.sizeBytes);
      this.handover.grow(v);
      this.log.info(ctx, 'volume grew online; the hub syncs the new space');
    } else if (found < before) {
      this.log.error(ctx, 'image is smaller than the volume: a shrink is not supported; the volume keeps its size');
    }
    link.send([encodeVolumeSize(volumeId, found)]);
  }

  /** Nothing the hub still has to acknowledge: no mirrored write pending, no report in hand-over. */
  get settled(): boolean {
    return this.mirror.pendingWrites === 0 && !this.handover.handingOver;
  }

  /** A clean goodbye: the hub then knows no write is missing (AGENT_SHUTDOWN). */
  sayGoodbye(): void {
    this.mirror.markerNow(); // a guest flush inside the marker gap still gets its point
    this.link?.send([encodeAgentShutdown()]);
  }

  /** Timers off (agent stopping). */
  stop(): void {
    this.stopSampling();
    this.lagBound.detach();
    this.handover.stop();
    this.refusals.reset();
  }

  /** protected, refused (and why), waiting for the hub's answer, or disconnected. */
  private volumeState(v: AgentVolume): { state: string; refusal: { cause: string; at: string } | null } {
    const r = this.refusals.of(v.name);
    const refusal = r && { cause: r.cause, at: new Date(r.atMs).toISOString() };
    if (this.volumes.hubId(v) >= 0) return { state: 'protected', refusal: null };
    if (r) return { state: 'refused', refusal };
    return { state: this.link ? 'waiting' : 'disconnected', refusal: null };
  }

  status() {
    return {
      pendingWrites: this.mirror.pendingWrites,
      ackLagMs: this.ackLagMs(),
      refusal: this.refusals.last,
      bandwidth: this.pacer ? this.pacer.status() : null,
      resync: this.governor.status(),
      lagBound: this.lagBound.status(),
      volumes: this.volumes.list.map((v) => ({
        name: v.name,
        ...this.volumeState(v),
        volumeId: this.volumes.hubId(v),
        sizeBytes: v.sizeBytes,
        dirtyBytes: v.log.bitmap.dirtyBytes,
        logDirtyBytes: v.log.persistedDirtyBytes,
        // bytes the hub's reads took around the page cache (cold data, storage/bulk-reader.ts)
        directReadBytes: (v.target as { directReadBytes?: number }).directReadBytes ?? 0,
      })),
    };
  }
}
