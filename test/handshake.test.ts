// The hub's side of the handshake (src/hub/handshake.ts) over a Link on a fake io: the first
// frame decides HELLO or legacy, HELLO's name must match the link's authenticated identity,
// IDENTITY comes once and before the volume report, and the report's deadline closes a session
// that never reports. The same rules through a whole session: conformance.test.ts, hub-e2e.
import { strict as assert } from 'node:assert';
import { ALL_CAPS, Cap, Cmd, FrameDecoder, MIN_MAX_PAYLOAD, ProtocolError } from '../protocol';
import type { Hello, Identity, Message } from '../protocol';
import { Link } from '../src/link/link';
import { Handshake } from '../src/hub/handshake';
import { silentLogger } from '../src/log';

function setup(identity: string | null = null, deadlineMs = 1e6) {
  const sent: number[] = [],
    events: string[] = [];
  const framer = new FrameDecoder((cmd) => sent.push(cmd));
  const link = new Link(
    { write: (bufs) => framer.push(Buffer.concat(bufs)), queuedBytes: () => 0, close: () => {} },
    { caps: ALL_CAPS, heartbeatMs: 1e6, name: 'hub', onDead: () => {} },
  );
  const hs = new Handshake(
    link,
    identity,
    deadlineMs,
    {
      greeted: () => events.push('greeted'),
      requireChecksums: () => events.push('checksums'),
      fail: (e) => events.push(`fail: ${e.message}`),
    },
    silentLogger(),
  );
  return { hs, link, sent, events };
}

const hello = (name: string, caps = ALL_CAPS): Hello => ({
  cmd: Cmd.HELLO,
  version: 1,
  caps,
  maxPayload: MIN_MAX_PAYLOAD,
  name,
});
const identity = (names: string[]): Identity => ({
  cmd: Cmd.IDENTITY,
  instanceId: Buffer.alloc(16, 7),
  volumes: names.map((name, i) => ({ name, lineage: [Buffer.alloc(16, i + 1)] })),
});
const report = { cmd: Cmd.REPORT_VM_VOLUMES } as Message;

describe('hub handshake', () => {
  it('HELLO first: agrees the caps, answers HELLO, asks for sealed frames, names the VM', () => {
    const { hs, link, sent, events } = setup();
    const h = hello('vm1', Cap.PING | Cap.FRAME_CRC | Cap.WRITE_ACK);
    hs.arrived(h);
    hs.hello(h);
    assert.equal(hs.vm, 'vm1');
    assert.equal(link.caps, Cap.PING | Cap.FRAME_CRC | Cap.WRITE_ACK);
    assert.deepEqual(sent, [Cmd.HELLO]);
    assert.deepEqual(events, ['checksums', 'greeted']);
    link.stop();
    hs.stop();
  });

  it('any other first frame: a legacy agent, no extensions; a HELLO after it is refused', () => {
    const { hs, link, events } = setup();
    hs.arrived(report);
    assert.equal(link.caps, 0);
    assert.deepEqual(events, ['greeted']);
    assert.throws(() => hs.arrived(hello('vm1')), /only valid as the first frame/);
    hs.stop();
  });

  it("refuses a HELLO naming another VM than the link's identity, and a bad max_payload", () => {
    const a = setup('vm1');
    assert.equal(a.hs.vm, 'vm1', 'named by the link before any HELLO');
    assert.throws(
      () => a.hs.hello(hello('vm2')),
      (e: unknown) => e instanceof ProtocolError && /authenticated "vm1"/.test(e.message),
    );
    assert.equal(a.hs.vm, 'vm1');
    const b = setup();
    assert.throws(() => b.hs.hello({ ...hello('vm1'), maxPayload: MIN_MAX_PAYLOAD - 1 }), /max_payload/);
    a.hs.stop();
    b.hs.stop();
  });

  it('IDENTITY once, before the report; with IDENTITY agreed no report before it', () => {
    const { hs } = setup();
    hs.hello(hello('vm1'));
    assert.throws(() => hs.reportArrived(), /before IDENTITY/);
    hs.identify(identity(['V1', 'V2']));
    assert.equal(hs.instance, '07'.repeat(16));
    assert.deepEqual(hs.lineage('V2'), [Buffer.alloc(16, 2)]);
    assert.equal(hs.lineage('V3'), null);
    assert.throws(() => hs.identify(identity(['V1'])), /second IDENTITY/);
    hs.reportArrived();
    hs.stop();
    const late = setup();
    late.hs.hello(hello('vm1', ALL_CAPS & ~Cap.IDENTITY));
    late.hs.reportArrived(); // no IDENTITY agreed: the report may come first
    assert.throws(() => late.hs.identify(identity(['V1'])), /IDENTITY after REPORT_VM_VOLUMES/);
    late.hs.stop();
  });

  it('closes a session that does not report in time, and not one whose report was applied', async () => {
    const slow = setup(null, 20),
      quick = setup(null, 20);
    quick.hs.reported();
    await new Promise((r) => setTimeout(r, 60));
    assert.deepEqual(slow.events, ['fail: no REPORT_VM_VOLUMES within 20 ms']);
    assert.deepEqual(quick.events, []);
  });
});
