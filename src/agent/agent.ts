// The replication agent: mirrors every completed local write of the protected volumes to the
// hub, answers the hub's remote IO, and keeps a dirty log so that a slow or absent hub costs a
// delta resync, never a stalled VM or unbounded memory. A thin composition: the socket-free
// core (core.ts) and the connection that dials the hub and feeds it (connection.ts).
import type * as tls from 'node:tls';
import { Cap, ALL_CAPS } from '../../protocol';
import { BufferPool } from '../buffer-pool';
import type { Logger } from '../log';
import { AgentCore } from './core';
import { HubAddress, HubConnection } from './connection';
import { AgentStats, newStats } from './ports';
import { SYNC_FLUSH_SLOW_MS } from './sync-flush';
import type { AgentVolumeSpec } from './volume';
import type { DirtyLog } from '../../storage/dirty-log';
import type { PacerOptions } from '../link/pacer';

// Mirrored writes awaiting the hub's durable ack. The hub acks after its group commit's
// fdatasync, which stalls for a second or more while the disk writes back a recovery volume full
// of random 4 KiB writes: at 50,000 writes/s the old 64 Ki filled, and each write past it was
// owed as a whole 64 KiB region, read back by the hub, 16x its bytes (one cause of issue 17's
// half-speed 4 KiB rounds: BENCHMARKS Round 21). 256 Ki covers 5 s of that; the ring grows to
// it only as acks lag (30 bytes a write, 7.5 MiB at most: pending-ring.ts).
export const DEFAULT_MAX_PENDING_WRITES = 1 << 18;

export type { AgentVolumeSpec } from './volume';

export interface AgentOptions {
  hubHost: string;
  hubPort: number;
  /** Further hubs to move to, in turn, when the current one is gone (connection.ts). */
  moreHubs?: HubAddress[];
  vm: string;
  volumes: AgentVolumeSpec[];
  log: Logger;
  caps?: number;
  maxQueueBytes?: number; // mirrored bytes buffered towards the hub; beyond it writes become dirty bits
  /** --max-lag: replies of writes wait while the backlog is more than this long (lag-bound.ts); 0: off. */
  maxLagMs?: number;
  maxPendingWrites?: number; // mirrored writes awaiting the hub's durable ack
  flushMarkerGapMs?: number; // FLUSH markers to the hub at most this often (mirror.ts)
  loopFlushMaxMs?: number; // --loop-flush-max: flushes sync on the event loop while syncs are fast (sync-flush.ts)
  maxRemoteIo?: number; // remote IOs executed at once
  seekData?: boolean; // find holes with SEEK_DATA/SEEK_HOLE (off: read everything, still send only non-zero chunks)
  reconnectMaxMs?: number;
  heartbeatMs?: number; // PING interval; the link is declared dead after 3 silent intervals
  tls?: tls.ConnectionOptions; // TLS (certificates or PSK) to the hub; plaintext when absent
  /** --max-rate, --resync-share, --max-resync-rate (link/pacer.ts); no cap when absent. */
  bandwidth?: PacerOptions;
}

const LOG_SYNC_MS = 1000; // cleared dirty bits reach the log file this often
// The kernel writes dirty pages back within 30 s anyway (vm.dirty_expire_centisecs), so an
// image flush this often costs little more than the device cache flush.
const IDLE_FLUSH_MS = 30_000;
const STOP_POLL_MS = 5;
/**
 * On by default: the bound drains on what the hub applied (WRITE_APPLIED, cap APPLIED), not on
 * its durable acks, so the guest is paced to the hub's ingest, not to its fdatasyncs (which cost
 * the 1 MiB job 714 -> 130 MiB/s and 4 KiB qd1 writes a third while the bound drained on acks,
 * docs/BENCHMARKS.md Round 5). Against a hub without the cap it drains on acks again.
 */
export const DEFAULT_MAX_LAG_MS = 500;
export { SYNC_FLUSH_SLOW_MS as DEFAULT_LOOP_FLUSH_MAX_MS };

export class ReplicationAgent {
  /** Guest write buffers (the NBD server receives large writes into them); the mirror holds one until sent. */
  readonly writePool = new BufferPool(1 << 20, 16);
  /** Counters for status and tests. */
  readonly stats: AgentStats = newStats();
  private readonly core: AgentCore;
  private readonly connection: HubConnection;
  private readonly syncTimer: NodeJS.Timeout;
  private flushingImages = false; // a background image flush round is under way
  private readonly lastImageFlush = new Map<string, number>(); // volume -> when its background flush began

  constructor(private readonly opts: AgentOptions) {
    // TLS records are authenticated already: frame checksums would only repeat that work
    const caps = opts.caps ?? (opts.tls ? ALL_CAPS & ~Cap.FRAME_CRC : ALL_CAPS);
    this.core = new AgentCore(
      opts.volumes,
      {
        maxQueueBytes: opts.maxQueueBytes ?? 64 << 20,
        maxPendingWrites: opts.maxPendingWrites ?? DEFAULT_MAX_PENDING_WRITES,
        flushMarkerGapMs: opts.flushMarkerGapMs,
        maxRemoteIo: opts.maxRemoteIo ?? 16,
        seekData: opts.seekData ?? true,
        pacer: opts.bandwidth,
        maxLagMs: opts.maxLagMs ?? DEFAULT_MAX_LAG_MS,
        loopFlushMaxMs: opts.loopFlushMaxMs ?? SYNC_FLUSH_SLOW_MS,
      },
      this.writePool,
      opts.log,
      this.stats,
    );
    this.connection = new HubConnection(
      {
        hubHost: opts.hubHost,
        hubPort: opts.hubPort,
        moreHubs: opts.moreHubs,
        vm: opts.vm,
        caps,
        tls: opts.tls,
        heartbeatMs: opts.heartbeatMs ?? 2000,
        reconnectMaxMs: opts.reconnectMaxMs ?? 5000,
      },
      this.core,
      opts.log,
      this.stats,
    );
    this.syncTimer = setInterval(() => void this.flushImages().then(() => this.syncLogs(false)), LOG_SYNC_MS);
    this.syncTimer.unref();
  }

  get log(): Logger {
    return this.opts.log;
  }

  get connected(): boolean {
    return this.connection.ready;
  }

  start(): void {
    this.connection.start();
  }

  /** Apply a guest write to the image and mirror it; never waits for the hub (see WritePath). */
  write(name: string, offset: number, data: Buffer | Buffer[]): Promise<void> {
    return this.core.writes.write(name, offset, data);
  }

  /** A small write done before returning; false when it must go through write(). The hot path. */
  writeNow(name: string, offset: number, data: Buffer): boolean {
    return this.core.writes.writeNow(name, offset, data);
  }

  /** Zeroing/trim: applied locally by `apply`; the range is handed to the hub as dirty. */
  zero(name: string, offset: number, length: number, apply: () => Promise<void>): Promise<void> {
    return this.core.writes.zero(name, offset, length, apply);
  }

  flush(name: string): Promise<void> {
    return this.core.writes.flush(name);
  }

  /** A flush done before returning (its fdatasync on the event loop); false: use flush(). */
  flushNow(name: string): boolean {
    return this.core.writes.flushNow(name);
  }

  status() {
    const core = this.core.status();
    const dial = this.connection.lastRefusal;
    const refusal = !dial || (core.refusal && core.refusal.atMs > dial.atMs) ? core.refusal : dial;
    return {
      vm: this.opts.vm,
      connected: this.connection.ready,
      // the newest time the hub would not have us (TLS/PSK, VOLUME_REFUSED, UNAUTHORIZED), or null
      refusal: refusal && { code: refusal.code, cause: refusal.cause, at: new Date(refusal.atMs).toISOString() },
      caps: this.connection.caps,
      queueBytes: this.connection.queuedBytes(),
      pendingWrites: core.pendingWrites,
      ackLagMs: core.ackLagMs,
      bandwidth: core.bandwidth,
      resync: core.resync,
      lagBound: core.lagBound,
      volumes: core.volumes,
      ...this.stats,
    };
  }

  /**
   * Clean stop: wait (bounded) for outstanding acks, send AGENT_SHUTDOWN, close. `drained` is
   * false when the drain timed out with the hub connected and `pendingWrites` still unacked (the
   * dirty log keeps them: the next run hands them over).
   */
  async stop(timeoutMs = 5000): Promise<{ drained: boolean; pendingWrites: number }> {
    this.connection.stopDialing();
    clearInterval(this.syncTimer);
    const until = Date.now() + timeoutMs;
    while (this.connection.ready && !this.core.settled && Date.now() < until) {
      await new Promise((r) => setTimeout(r, STOP_POLL_MS));
    }
    const drained = !this.connection.ready || this.core.settled;
    const pendingWrites = this.core.status().pendingWrites;
    await this.connection.close(() => this.core.sayGoodbye());
    this.core.stop();
    this.syncLogs(true);
    return { drained, pendingWrites };
  }

  /**
   * A hot extent goes cold only after an image flush that began after its last write. A guest
   * that never flushes would keep every extent hot, and each new one would then cost an image
   * sync on the event loop: flush the images in the background, one round at a time. Not every
   * second: while the activity log is less than half full, a hot extent costs nothing (only a
   * larger resync after a crash) and each flush costs the agent system time, so only every
   * IDLE_FLUSH_MS, which lets extents written once and left alone go cold.
   */
  private async flushImages(): Promise<void> {
    if (this.flushingImages) return;
    this.flushingImages = true;
    try {
      for (const v of this.opts.volumes) {
        if (!this.imageFlushDue(v.name, v.log)) continue;
        this.lastImageFlush.set(v.name, Date.now());
        const upTo = v.log.imageFlushStarting();
        await v.target.flush();
        v.log.imageFlushed(upTo);
      }
    } catch (e) {
      this.log.warn(
        { cause: (e as Error).message },
        'background flush of a protected image failed; its extents stay hot',
      );
    } finally {
      this.flushingImages = false;
    }
  }

  private imageFlushDue(name: string, log: DirtyLog): boolean {
    if (log.hotExtents === 0) return false;
    if (log.hotExtents * 2 > log.maxHotExtents) return true;
    return Date.now() - (this.lastImageFlush.get(name) ?? 0) >= IDLE_FLUSH_MS;
  }

  private syncLogs(durable: boolean): void {
    for (const v of this.opts.volumes) v.log.sync(durable);
  }
}
