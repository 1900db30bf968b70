// The hub's receiver rules for frames an agent sends in the wrong place (SPEC.md sections 4, 5.7,
// 5.12, 6): a command whose capability was not negotiated, a frame after AGENT_SHUTDOWN, a HELLO
// the spec does not allow. Pure checks on the frame and the session's handshake state; each
// violation is a ProtocolError that closes that session only. Kept apart so session.ts stays
// intake and dispatch.
import { Cap, Cmd, MIN_MAX_PAYLOAD, ProtocolError } from '../../protocol';
import type { Hello } from '../../protocol';

/** The capability an agent->hub command needs (SPEC.md section 4); 0 for base commands. */
const NEEDS: Partial<Record<Cmd, number>> = {
  [Cmd.DIRTY_REPORT]: Cap.DIRTY_REPORT,
  [Cmd.FLUSH]: Cap.FLUSH,
  [Cmd.CHECKSUM_RES]: Cap.CHECKSUM,
  [Cmd.IDENTITY]: Cap.IDENTITY,
  [Cmd.VOLUME_SIZE]: Cap.RESIZE,
  [Cmd.POINT]: Cap.POINT,
};

/** Commands that only travel hub->agent (SPEC.md section 4: direction is normative). */
const HUB_TO_AGENT = new Set<number>([
  Cmd.START_PROTECT,
  Cmd.STOP_PROTECT,
  Cmd.REMOTE_IO_REQ,
  Cmd.WRITE_ACK,
  Cmd.WRITE_APPLIED,
  Cmd.DIRTY_REPORT_ACK,
  Cmd.CHECKSUM_REQ,
]);

/** Frames still allowed after AGENT_SHUTDOWN: the heartbeat and a last word. */
const AFTER_SHUTDOWN = new Set<number>([Cmd.PING, Cmd.PONG, Cmd.ERROR]);

/**
 * Check one agent->hub frame against the handshake state (and its direction), in arrival order (before it is
 * queued). `caps`: the negotiated capabilities (0 for a legacy agent); `shutDown`: an
 * AGENT_SHUTDOWN arrived earlier on this connection. PING is answered even without the cap.
 */
export function checkIntake(cmd: Cmd, caps: number, shutDown: boolean): void {
  if (shutDown && !AFTER_SHUTDOWN.has(cmd)) {
    throw new ProtocolError(`${Cmd[cmd]} after AGENT_SHUTDOWN: the agent said it was done`);
  }
  if (HUB_TO_AGENT.has(cmd)) throw new ProtocolError(`command ${Cmd[cmd]} goes hub->agent, not agent->hub`);
  const need = NEEDS[cmd];
  if (need !== undefined && (caps & need) === 0) {
    throw new ProtocolError(`${Cmd[cmd]} sent without its capability (negotiated caps 0x${caps.toString(16)})`);
  }
}

/** The agent's HELLO: version 1 or later, and a max_payload the hub's frames fit in (SPEC.md 6.1, 6.3). */
export function checkHello(h: Hello): void {
  if (h.version < 1) throw new ProtocolError(`HELLO version ${h.version}: versions start at 1`);
  if (h.maxPayload < MIN_MAX_PAYLOAD) {
    throw new ProtocolError(`HELLO max_payload ${h.maxPayload} is below the minimum ${MIN_MAX_PAYLOAD}`);
  }
}

/**
 * IDENTITY's place (SPEC.md 5.16): once, before the first REPORT_VM_VOLUMES; with IDENTITY agreed,
 * no REPORT_VM_VOLUMES before it. `identified`: an IDENTITY arrived; `reported`: a report did.
 */
export function checkIdentityOrder(cmd: Cmd, caps: number, identified: boolean, reported: boolean): void {
  if (cmd === Cmd.IDENTITY && (identified || reported)) {
    throw new ProtocolError(identified ? 'second IDENTITY on one connection' : 'IDENTITY after REPORT_VM_VOLUMES');
  }
  if (cmd === Cmd.REPORT_VM_VOLUMES && (caps & Cap.IDENTITY) !== 0 && !identified) {
    throw new ProtocolError('REPORT_VM_VOLUMES before IDENTITY, with IDENTITY negotiated');
  }
}
