// The hub's side of an agent's handshake (SPEC.md 6, 5.16): the first frame (HELLO, or a legacy
// agent's first command), the VM's name checked against who the link authenticated, the
// capabilities agreed, IDENTITY's instance and lineages in their place before the volume report,
// and the deadline for that report. Owns that state; the session (session.ts) owns intake and
// dispatch and hands each frame here in arrival order, before it is queued.
import { Cmd, Cap, ErrorCode, PROTOCOL_VERSION, ProtocolError } from '../../protocol';
import type { Hello, Identity, Message } from '../../protocol';
import type { Logger } from '../log';
import type { Link } from '../link/link';
import { checkHello, checkIdentityOrder } from './receive-rules';

export interface HandshakeHost {
  /** The agent said who it is (HELLO), or sent a legacy first frame. */
  greeted(): void;
  /** The FRAME_CRC reply went out: every frame after it must be sealed (Transport.requireChecksums). */
  requireChecksums(): void;
  /** No volume report by the deadline: close the session. */
  fail(e: Error): void;
}

export class Handshake {
  /** The VM's name: the link's authenticated identity, then HELLO's (checked equal); '' before. */
  vm: string;
  /** The agent process's instance id (cap IDENTITY), hex; null without it. */
  instance: string | null = null;
  /** Each volume's identity lineage from IDENTITY (current UUID first); null before it or without the cap. */
  private lineages: Map<string, Buffer[]> | null = null;
  private firstFrame = true;
  private reportSeen = false; // a REPORT_VM_VOLUMES arrived (intake order)
  private readonly deadline: NodeJS.Timeout;

  constructor(
    private readonly link: Link,
    /** Who the link authenticated (certificate CN or PSK identity); null on a plaintext link. */
    private readonly identity: string | null,
    handshakeMs: number,
    private readonly host: HandshakeHost,
    private readonly log: Logger,
  ) {
    this.vm = identity ?? '';
    // An idle or half-open connection must not hold one of the hub's session slots forever.
    this.deadline = setTimeout(
      () => host.fail(new ProtocolError(`no REPORT_VM_VOLUMES within ${handshakeMs} ms`, ErrorCode.TIMEOUT)),
      handshakeMs,
    );
    this.deadline.unref();
  }

  /** Every frame, as it arrives: only the first may be HELLO; any other first frame means a legacy agent. */
  arrived(msg: Message): void {
    if (!this.firstFrame) {
      if (msg.cmd === Cmd.HELLO) throw new ProtocolError('HELLO is only valid as the first frame');
      return;
    }
    this.firstFrame = false;
    if (msg.cmd === Cmd.HELLO) return;
    this.link.legacy();
    this.log.info('agent sent no HELLO: legacy seed protocol, no extensions');
    this.host.greeted();
  }

  /** A REPORT_VM_VOLUMES arrived (checked after its capability): IDENTITY must have come first. */
  reportArrived(): void {
    checkIdentityOrder(Cmd.REPORT_VM_VOLUMES, this.link.caps, this.lineages !== null, this.reportSeen);
    this.reportSeen = true;
  }

  /** The report was applied: the deadline is met. */
  reported(): void {
    clearTimeout(this.deadline);
  }

  /** The session closed. */
  stop(): void {
    clearTimeout(this.deadline);
  }

  /** A volume's lineage from IDENTITY; null without one. */
  lineage(name: string): Buffer[] | null {
    return this.lineages?.get(name) ?? null;
  }

  /** IDENTITY: session metadata, before any report; kept at once, never queued. */
  identify(m: Identity): void {
    checkIdentityOrder(Cmd.IDENTITY, this.link.caps, this.lineages !== null, this.reportSeen);
    this.instance = m.instanceId.toString('hex');
    this.lineages = new Map(m.volumes.map((v) => [v.name, v.lineage]));
    const volumes = m.volumes.map((v) => ({ volume: v.name, uuid: v.lineage[0].toString('hex') }));
    this.log.info({ vm: this.vm, instance: this.instance, volumes }, 'agent identity');
  }

  hello(h: Hello): void {
    checkHello(h);
    if (this.identity && h.name !== this.identity) {
      throw new ProtocolError(
        `HELLO names VM "${h.name}" but the link authenticated "${this.identity}"`,
        ErrorCode.UNAUTHORIZED,
      );
    }
    this.vm = h.name;
    this.link.agree(h.caps);
    // Our reply carries the agreed capabilities and is never sealed; every frame after it is.
    this.link.sendHello(Math.min(PROTOCOL_VERSION, h.version));
    // The agent seals every frame it sends after it received this reply, and sends none before.
    if (this.link.has(Cap.FRAME_CRC)) this.host.requireChecksums();
    this.log.info({ vm: this.vm, version: h.version, caps: this.link.caps }, 'agent hello');
    this.host.greeted();
    if (this.link.has(Cap.PING)) this.link.startHeartbeat();
  }
}
