// The agent<->hub link, the same on both ends and free of sockets: HELLO and the capability
// intersection, CRC sealing of outgoing frames once FRAME_CRC is agreed, heartbeats and
// dead-peer detection, and batched sends through a LinkIo (a socket, or a simulation's queue).
// Receiving (framing, CRC checks) stays in protocol/framer.ts; the owner feeds heard().
import { Cap, Limits, PROTOCOL_VERSION, encodeHello, encodePing, encodePong, FrameSealer } from '../../protocol';
import { pingNonce } from './ping-nonce';
import { assert } from '../assert';

/** What is under a link: one frame's buffers out, and how many bytes wait to leave. */
export interface LinkIo {
  /** Send one frame's buffers; `done` runs once the buffers are no longer needed. */
  write(bufs: Buffer[], done?: () => void): void;
  /** Bytes written but not yet taken by the kernel (0 when unknown). */
  queuedBytes(): number;
  close(reason?: Error): void;
}

export interface LinkOptions {
  /** Capabilities this end offers; the link uses their intersection with the peer's. */
  caps: number;
  /** PING interval; the peer is declared dead after DEAD_AFTER silent intervals. */
  heartbeatMs: number;
  /** Name sent in HELLO: the VM on the agent, the hub's name on the hub. */
  name: string;
  /** The peer was silent too long: the owner closes the connection (the link is still open for a last frame). */
  onDead(silentMs: number): void;
}

export const DEAD_AFTER = 3; // silent heartbeat intervals before the peer is presumed dead

export class Link {
  /** Negotiated capabilities: 0 until the peer's HELLO, and for a legacy peer that sends none. */
  caps = 0;
  private agreed = false;
  private sealing = false;
  private readonly sealer = new FrameSealer();
  private lastHeard = Date.now();
  private receivePaused = false;
  private heartbeat: NodeJS.Timeout | null = null;
  private closed = false;

  constructor(
    private readonly io: LinkIo,
    private readonly opts: LinkOptions,
  ) {
    assert(opts.heartbeatMs > 0, 'heartbeat interval must be positive');
  }

  /** The capabilities this end offers. */
  get offered(): number {
    return this.opts.caps;
  }

  /** Whether a capability was agreed on. */
  has(cap: number): boolean {
    return (this.caps & cap) !== 0;
  }

  /**
   * Our HELLO. Never sealed: the peer learns of FRAME_CRC from it. Sent after agree() (the
   * hub's reply), it carries the agreed capabilities, as SPEC.md section 6.1 has it.
   */
  sendHello(version = PROTOCOL_VERSION): void {
    if (this.closed) return;
    const caps = this.agreed ? this.caps : this.opts.caps;
    this.io.write([encodeHello(version, caps, Limits.maxPayload, this.opts.name)]);
  }

  /**
   * The peer's HELLO arrived: agree on the intersection. Frames this end sends from now on are
   * sealed when FRAME_CRC was agreed (the hub sends its own HELLO first, the agent sent it already).
   */
  agree(peerCaps: number): number {
    assert(!this.agreed, 'capabilities are agreed once per connection');
    this.agreed = true;
    this.caps = peerCaps & this.opts.caps;
    this.sealing = (this.caps & Cap.FRAME_CRC) !== 0;
    return this.caps;
  }

  /** A peer that answered without HELLO speaks the plain seed protocol: no extensions. */
  legacy(): void {
    assert(!this.agreed, 'capabilities are agreed once per connection');
    this.agreed = true;
    this.caps = 0;
  }

  get isAgreed(): boolean {
    return this.agreed;
  }

  /** One frame out, sealed once FRAME_CRC is agreed; `done` as in LinkIo.write. */
  send(bufs: Buffer[], done?: () => void): void {
    if (this.closed) return done?.();
    this.io.write(this.sealing ? this.sealer.seal(bufs) : bufs, done);
  }

  queuedBytes(): number {
    return this.closed ? 0 : this.io.queuedBytes();
  }

  /** Anything at all arrived from the peer. */
  heard(): void {
    this.lastHeard = Date.now();
  }

  silentMs(): number {
    return Date.now() - this.lastHeard;
  }

  /** While this end does not read (its own back-pressure), the peer's silence is not its fault. */
  pauseReceive(paused: boolean): void {
    this.receivePaused = paused;
    if (!paused) this.lastHeard = Date.now();
  }

  /** Answer a PING. */
  pong(nonce: number): void {
    this.send([encodePong(nonce)]);
  }

  /**
   * PING every interval while PING is agreed, and declare the peer dead after DEAD_AFTER silent
   * intervals. Before agreement it only waits: the owner's first-frame wait judges that silence
   * (agent/connection.ts: a silent seed hub is a legacy hub to speak to, not a dead one), and
   * both rules on the same deadline would race (under load the dead-peer tick could fire first
   * and dial again a hub that is only waiting for our volume report).
   */
  startHeartbeat(): void {
    if (this.heartbeat || this.closed) return;
    const ms = this.opts.heartbeatMs;
    this.lastHeard = Date.now();
    this.heartbeat = setInterval(() => {
      if (!this.agreed) return;
      // A peer without PING (a legacy seed hub) may rightly say nothing for hours: TCP keepalive
      // covers it, not the dead-peer rule.
      if (!this.has(Cap.PING)) return this.stopHeartbeat();
      const silent = this.silentMs();
      if (silent > DEAD_AFTER * ms && !this.receivePaused) {
        // Heartbeat off, the link still open: the owner may send a last ERROR, then closes.
        this.stopHeartbeat();
        this.opts.onDead(silent);
      } else if (this.has(Cap.PING)) this.send([encodePing(pingNonce())]);
    }, ms);
    this.heartbeat.unref();
  }

  /** Timers off, nothing more is sent. */
  stop(): void {
    this.closed = true;
    this.stopHeartbeat();
  }

  private stopHeartbeat(): void {
    if (this.heartbeat) clearInterval(this.heartbeat);
    this.heartbeat = null;
  }

  close(reason?: Error): void {
    this.stop();
    this.io.close(reason);
  }
}
