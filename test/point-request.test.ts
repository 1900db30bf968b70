// The policy of consistent points other than guest flushes (SPEC.md 7.4), on both sides.
// Hub (src/hub/point-request.ts): where a point may be taken for each agent, one POINT request
// at a time, a POINT never asked for refused. Agent (src/agent/mirror.ts): a requested POINT
// leaves only once every owed region is reported, exactly once, and not after a reconnect.
import { strict as assert } from 'node:assert';
import { Cap, Cmd, ProtocolError, FrameDecoder, decode, type Message } from '../protocol';
import { PointRequests, type PointQueue } from '../src/hub/point-request';
import { Mirror, type OverflowSink } from '../src/agent/mirror';
import type { VolumeTable } from '../src/agent/volume';
import type { RegionGate } from '../src/agent/region-gate';
import type { BufferPool } from '../src/buffer-pool';
import type { AgentStats } from '../src/agent/ports';
import { silentLogger } from '../src/log';

function fakeLink(caps: number) {
  const sent: Message[] = [];
  const dec = new FrameDecoder((cmd, p) => sent.push(decode(cmd, Buffer.from(p))));
  return {
    sent,
    has: (c: number) => (caps & c) !== 0,
    send: (bufs: Buffer[]) => dec.push(Buffer.concat(bufs)),
    queuedBytes: () => 0,
  };
}

const queue: PointQueue = {
  barrier: (fn) => Promise.resolve(fn()),
  barrierAtFlush: (fn) => Promise.resolve(fn()),
};

describe('hub: where a journal point may be taken (PointRequests)', () => {
  it('an agent that can owe nothing (no DIRTY_REPORT): any barrier, nothing asked', () => {
    const link = fakeLink(Cap.WRITE_ACK | Cap.FLUSH);
    const p = new PointRequests(link, queue, silentLogger(), () => 'vm');
    assert.equal(p.ask(), 'stream');
    assert.equal(link.sent.length, 0);
  });

  it('an agent that can mark points: one POINT request out at a time', () => {
    const link = fakeLink(Cap.DIRTY_REPORT | Cap.FLUSH | Cap.POINT);
    const p = new PointRequests(link, queue, silentLogger(), () => 'vm');
    assert.equal(p.ask(), 'marker');
    assert.equal(p.ask(), 'marker');
    assert.deepEqual(link.sent, [{ cmd: Cmd.POINT, checkpointId: 0 }]);
    p.answered();
    assert.equal(p.ask(), 'marker');
    assert.equal(link.sent.length, 2);
    p.answered();
    assert.throws(() => p.answered(), ProtocolError, 'a POINT never asked for');
  });

  it('an agent that owes by report but cannot mark points: only its FLUSH markers, nothing asked', () => {
    const link = fakeLink(Cap.DIRTY_REPORT | Cap.FLUSH);
    const p = new PointRequests(link, queue, silentLogger(), () => 'vm');
    assert.equal(p.ask(), 'flush');
    assert.equal(p.ask(), 'flush');
    assert.equal(link.sent.length, 0);
  });
});

describe('agent: a requested POINT follows the owed reports (Mirror)', () => {
  let canReport = false;
  const sink: OverflowSink = { owe: () => undefined, acked: () => undefined, reportOwedNow: () => canReport };
  const volumes = { list: [] } as unknown as VolumeTable;
  const stats = { writes: 0, mirroredBytes: 0, overflowWrites: 0 } as unknown as AgentStats;
  const mirror = () =>
    new Mirror(
      volumes,
      {} as RegionGate,
      sink,
      { maxQueueBytes: 1 << 20, maxPendingWrites: 16 },
      {} as BufferPool,
      stats,
    );

  it('waits while an owed region cannot be reported, then sends one POINT at the next report ack', () => {
    const m = mirror(),
      link = fakeLink(Cap.DIRTY_REPORT | Cap.POINT);
    m.attach(link);
    canReport = false;
    m.pointRequested();
    assert.equal(link.sent.length, 0, 'no POINT ahead of an unreported owed region');
    canReport = true;
    m.retryPoint();
    assert.deepEqual(link.sent, [{ cmd: Cmd.POINT, checkpointId: 0 }]);
    m.retryPoint();
    assert.equal(link.sent.length, 1, 'one POINT per request');
    m.detach();
  });

  it('a request does not outlive its connection', () => {
    const m = mirror(),
      first = fakeLink(Cap.DIRTY_REPORT | Cap.POINT),
      second = fakeLink(Cap.DIRTY_REPORT | Cap.POINT);
    m.attach(first);
    canReport = false;
    m.pointRequested();
    m.detach();
    m.attach(second);
    canReport = true;
    m.retryPoint();
    assert.equal(first.sent.length + second.sent.length, 0);
    m.detach();
  });
});
