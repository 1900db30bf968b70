// Judging a finished fuzz session against the model's prediction: did the hub end it, with the
// predicted ERROR, after answering every PING, without ever breaking the protocol on its side?
import { Cmd, Cap, PROTOCOL_VERSION, Message } from '../../../protocol';
import type { HubModel, Expected } from './hub-model';
import type { Peer } from './peer';
import { CampaignResult, fail, bump } from './result';

export interface JudgeCtx {
  res: CampaignResult;
  hangMs: number;
  goodVolume: string;
}

/** Check a finished session (`ended`: it closed within hangMs) and count it. */
export function judge(
  j: JudgeCtx,
  sc: string,
  peer: Peer,
  m: HubModel,
  expect: Expected | null,
  ended: boolean,
  endedBy: 'hub' | 'fin',
): void {
  const res = j.res;
  res.sessions++;
  bump(res.scenarios, sc);
  if (peer.badFrame) {
    res.hubBadFrames++;
    fail(res, `${sc}: hub sent a malformed frame: ${peer.badFrame}`);
  }
  for (const e of peer.errors()) bump(res.errorCodes, String(e.code));
  const term = peer.terminal();
  if (!ended) {
    res.hangs++;
    fail(
      res,
      `${sc}: hang: ${endedBy === 'fin' ? 'not closed within' : 'neither closed nor answered within'} ${j.hangMs} ms ` +
        `(expected ${expect ? `ERROR ${expect.code} ${expect.message ?? expect.prefix ?? ''} (${expect.why})` : 'close after FIN'})`,
    );
  }
  if (ended && term) res.closedWithError++;
  if (ended && !term && endedBy === 'fin') res.closedAfterFin++;
  checkReplies(j, sc, peer, m);
  if (!ended) return;
  checkEnding(res, sc, peer, m, expect);
}

/** What the hub sent: HELLO only in reply to a valid first HELLO, nothing beyond the agreed caps. */
function checkReplies(j: JudgeCtx, sc: string, peer: Peer, m: HubModel): void {
  const res = j.res;
  const violation = (what: string) => {
    res.protocolViolations++;
    fail(res, `${sc}: ${what}`);
  };
  // HELLO: only as the reply to a valid first HELLO, once, with min(version) and a subset of our caps.
  const hellos = peer.msgs.filter((x): x is Extract<Message, { cmd: Cmd.HELLO }> => x.cmd === Cmd.HELLO);
  if (m.hello) {
    if (hellos.length !== 1 || peer.msgs[0]?.cmd !== Cmd.HELLO) {
      violation(
        `hub reply to HELLO: ${
          peer.msgs
            .slice(0, 3)
            .map((x) => Cmd[x.cmd])
            .join(',') || 'none'
        }`,
      );
    } else {
      const h = hellos[0];
      if (h.version !== Math.max(1, Math.min(PROTOCOL_VERSION, m.hello.version))) {
        violation(`hub HELLO version ${h.version} for agent version ${m.hello.version}`);
      }
      if (h.version < 1) bump(res.observations, 'hubHelloVersion0'); // §6.1 "Peers send version >= 1"; the hub echoes min(1, 0)
      if ((h.caps & ~m.hello.caps) !== 0) {
        violation(`hub caps 0x${h.caps.toString(16)} not a subset of 0x${m.hello.caps.toString(16)}`);
      }
    }
  } else if (hellos.length > 0) violation('hub sent HELLO to a peer whose first frame was not a valid HELLO');
  const caps = hellos[0]?.caps ?? 0;
  for (const x of peer.msgs) {
    if (x.cmd === Cmd.WRITE_ACK && !(caps & Cap.WRITE_ACK)) violation('WRITE_ACK without the cap');
    if (x.cmd === Cmd.WRITE_APPLIED && !(caps & Cap.APPLIED)) violation('WRITE_APPLIED without the cap');
    if (x.cmd === Cmd.POINT && !(caps & Cap.POINT)) violation('hub POINT without the cap');
    if (x.cmd === Cmd.PING && !(caps & Cap.PING)) violation('hub PING without the cap');
    if (x.cmd === Cmd.CHECKSUM_REQ && !(caps & Cap.CHECKSUM)) violation('CHECKSUM_REQ without the cap');
    // §6.1: never to a legacy agent
    if (x.cmd === Cmd.DIRTY_REPORT_ACK && !(caps & Cap.DIRTY_REPORT))
      bump(res.observations, 'dirtyReportAckWithoutCap');
    if (x.cmd === Cmd.START_PROTECT) {
      if (x.name === j.goodVolume) {
        res.claimantStartProtect++;
        fail(res, `${sc}: START_PROTECT for ${j.goodVolume}, held by the good agent`);
      } else if (!m.taint && ![...m.owned.values()].some((v) => v.name === x.name) && x.name !== m.claiming) {
        violation(`START_PROTECT for ${x.name}, never claimed`);
      }
    }
    if (x.cmd === Cmd.REMOTE_IO_REQ && !m.taint && !m.owned.has(x.volumeId) && m.claiming === null) {
      violation(`REMOTE_IO_REQ for volume ${x.volumeId} not on this connection`);
    }
  }
}

/** The error the hub ended with against the prediction, and every PING before it answered in order. */
function checkEnding(res: CampaignResult, sc: string, peer: Peer, m: HubModel, expect: Expected | null): void {
  const term = peer.terminal();
  if (expect) {
    res.expectedErrors++;
    bump(res.predicted, expect.why);
    if (!term) {
      res.missingError++;
      fail(
        res,
        `${sc}: closed without an ERROR frame; expected ${expect.code} ${expect.message ?? expect.prefix ?? ''} ` +
          `(${expect.why})${peer.reset ? ' [connection reset]' : ''}`,
      );
    } else if (!m.taint) {
      const textOk =
        expect.message !== undefined
          ? term.message === expect.message
          : expect.prefix !== undefined
            ? term.message.startsWith(expect.prefix)
            : true;
      if (term.code !== expect.code || !textOk) {
        res.mismatches++;
        fail(
          res,
          `${sc}: hub ERROR ${term.code} "${term.message}", model expected ${expect.code} ` +
            `"${expect.message ?? expect.prefix}" (${expect.why})`,
        );
      }
    }
  } else if (term && !m.taint) {
    res.mismatches++;
    fail(
      res,
      `${sc}: hub ERROR ${term.code} "${term.message}" where the model predicted no error${m.taint ? ` (tainted: ${m.taint})` : ''}`,
    );
  }
  // Every PING the hub decoded before the error is answered, in order, before the ERROR frame;
  // none behind the fatal frame is.
  if (m.taint) return;
  const cut = term ? peer.msgs.indexOf(term) : peer.msgs.length;
  const pongs = peer.msgs
    .slice(0, cut)
    .filter((x) => x.cmd === Cmd.PONG)
    .map((x) => (x as { nonce: number }).nonce);
  const want = m.pings;
  let ok = pongs.length === want.length;
  for (let i = 0; ok && i < want.length; i++) ok = pongs[i] === want[i];
  if (!ok) {
    res.pongMissing++;
    fail(
      res,
      `${sc}: ${want.length} PINGs before the error, ${pongs.length} PONGs before it ` +
        `(first difference at ${pongs.findIndex((p, i) => p !== want[i])})`,
    );
  }
}
