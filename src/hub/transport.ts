// How an agent session reaches its connection (TCP, TLS, or a test's in-memory pipe): the
// Transport the listener gives it, and that Transport as the session link's IO.
import type { LinkIo } from '../link/link';

export interface Transport {
  send(bufs: Buffer[]): void;
  close(reason?: Error): void;
  pause(paused: boolean): void;
  /** FRAME_CRC was agreed: the framer in front of receive() now refuses unsealed frames (SPEC.md 3.1). */
  requireChecksums?(): void;
  /** The agent's address (host:port), for messages naming who holds a volume. */
  readonly peer?: string;
  /** endOfRead() follows every read: a read's small writes wait for it, applied together (inline-batch.ts). */
  readonly endsReads?: boolean;
}

/** A Transport as the link's IO. It reports no completion, so `done` runs once the frame is handed over. */
export function transportIo(t: Transport): LinkIo {
  return {
    write: (bufs, done) => {
      t.send(bufs);
      done?.();
    },
    queuedBytes: () => 0,
    close: (reason) => t.close(reason),
  };
}
