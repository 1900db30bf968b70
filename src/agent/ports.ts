// What the agent core needs from its surroundings, as interfaces: the link it sends on (a
// src/link Link in production, a queue in the simulation) and the holders of a region's dirty bit.
import type { AgentVolume } from './volume';

/** The connection as the core modules see it: never a socket. */
export interface LinkPort {
  /** One frame out; `done` runs once its buffers are free (sent, or the link is gone). */
  send(bufs: Buffer[], done?: () => void): void;
  /** A resync answer (the hub's reads, checksums): paced below mirrored writes under --max-rate (link/pacer.ts). */
  sendBulk?(bufs: Buffer[], done?: () => void): void;
  /** Bytes waiting to leave: the mirror's back-pressure signal. */
  queuedBytes(): number;
  /** Whether a capability was agreed on this connection. */
  has(cap: number): boolean;
  /** End the connection (the next one resyncs); absent where the owner closes it. */
  close?(reason?: Error): void;
}

/** A module whose state keeps a region's dirty bit set (a write in flight, a report unacked...). */
export interface RegionHolder {
  holds(v: AgentVolume, region: number): boolean;
  /** The regions of [first, last] it holds, pushed as runs [a, b) (flat pairs); holds() over a range. */
  heldRuns(v: AgentVolume, first: number, last: number, out: number[]): void;
}

/** Counters for status() and tests; each field is counted by one module. */
export interface AgentStats {
  writes: number;
  mirroredBytes: number;
  overflowWrites: number;
  remoteReads: number;
  remoteReadBytes: number;
  remoteZeroBytes: number;
  remoteDiskBytes: number;
  remoteWrites: number;
  connects: number;
  reportedBytes: number;
  /** Guest flushes whose fdatasync ran on the event loop (sync-flush.ts), and syncs found slow. */
  loopFlushes: number;
  slowFlushes: number;
}

export function newStats(): AgentStats {
  return {
    writes: 0,
    mirroredBytes: 0,
    overflowWrites: 0,
    remoteReads: 0,
    remoteReadBytes: 0,
    remoteZeroBytes: 0,
    remoteDiskBytes: 0,
    remoteWrites: 0,
    connects: 0,
    reportedBytes: 0,
    loopFlushes: 0,
    slowFlushes: 0,
  };
}
