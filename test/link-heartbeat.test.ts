// The link's dead-peer rule (src/link/link.ts): it judges only an agreed link with PING. Before
// agreement the owner's first-frame wait judges the silence (a seed hub says nothing until our
// volume report), and after a legacy agreement the peer may rightly stay silent.
import { strict as assert } from 'node:assert';
import { Cap, Cmd, FrameDecoder } from '../protocol';
import { Link, DEAD_AFTER } from '../src/link/link';

// Heartbeat interval of these links: long enough that a GC pause or a late timer under CI load
// (~20 ms at 10) does not make the first tick find the peer silent past DEAD_AFTER intervals.
const MS = 50;

/** A Link over a fake io: what it sent (by command) and whether it declared the peer dead. */
function link(): { link: Link; sent: number[]; dead: number[] } {
  const sent: number[] = [],
    dead: number[] = [];
  const framer = new FrameDecoder((cmd) => sent.push(cmd));
  const l = new Link(
    { write: (bufs) => framer.push(Buffer.concat(bufs)), queuedBytes: () => 0, close: () => {} },
    { caps: Cap.PING, heartbeatMs: MS, name: 'vm', onDead: (silentMs) => dead.push(silentMs) },
  );
  return { link: l, sent, dead };
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const SILENCE = (DEAD_AFTER + 5) * MS;

describe('link heartbeat: who judges a silent peer', () => {
  it('before agreement: no PING and no dead verdict, however long the silence', async () => {
    const { link: l, sent, dead } = link();
    l.startHeartbeat();
    await sleep(SILENCE);
    assert.deepEqual(dead, [], 'the first-frame wait, not the heartbeat, judges a peer that has not answered HELLO');
    assert.deepEqual(sent, []);
    l.stop();
  });

  it('agreed with PING: PINGs every interval, and a silent peer is declared dead once', async () => {
    const { link: l, sent, dead } = link();
    l.agree(Cap.PING);
    l.startHeartbeat();
    await sleep(SILENCE);
    assert.ok(sent.filter((c) => c === Cmd.PING).length >= 1, `sent ${sent}`);
    assert.equal(dead.length, 1);
    assert.ok(dead[0] > DEAD_AFTER * MS, `silent ${dead[0]} ms`);
    l.stop();
  });

  it('agreed as legacy (no PING): the heartbeat stops, a silent peer is not dead', async () => {
    const { link: l, sent, dead } = link();
    l.startHeartbeat();
    l.legacy();
    await sleep(SILENCE);
    assert.deepEqual(dead, []);
    assert.deepEqual(sent, []);
    l.stop();
  });

  it('a heartbeat started before agreement judges from the agreement on', async () => {
    const { link: l, dead } = link();
    l.startHeartbeat();
    await sleep(SILENCE);
    l.agree(Cap.PING);
    l.heard(); // the peer's HELLO
    await sleep(SILENCE);
    assert.equal(dead.length, 1, 'dead once agreed and silent');
    l.stop();
  });
});
