// The applied drain of the backlog bound (cap APPLIED, SPEC.md 5.19): the hub's WRITE_APPLIED,
// batched by its group commit (src/hub/group-commit.ts), and the agent's mirror counting those
// bytes drained without clearing anything (src/agent/mirror.ts); the bound then lets a guest go
// on while the hub's fdatasyncs lag (src/agent/lag-bound.ts).
import { strict as assert } from 'node:assert';
import { Cap, Cmd, decode, ProtocolError } from '../protocol';
import { GroupCommit, APPLIED_GAP_MS } from '../src/hub/group-commit';
import { Mirror } from '../src/agent/mirror';
import { DEFAULT_MAX_PENDING_WRITES } from '../src/agent/agent';
import { RegionGate } from '../src/agent/region-gate';
import { VolumeTable } from '../src/agent/volume';
import { newStats } from '../src/agent/ports';
import { LagBound } from '../src/agent/lag-bound';
import { SAMPLE_MS } from '../src/agent/ack-lag';
import { BufferPool } from '../src/buffer-pool';
import { DirtyLog } from '../storage/dirty-log';
import { MemoryVolume } from '../storage/volume';
import { sleep } from './harness/util';
import { fakeClock } from './harness/fake-clock';

const MiB = 1 << 20;

/** A mirror of one 64 MiB volume protected on a link that takes every frame. */
function mirrorOn(caps: number, maxPendingWrites = 1 << 16) {
  const size = 64 * MiB,
    rs = 64 << 10;
  const volumes = new VolumeTable([{ name: 'V1', target: new MemoryVolume(size), log: DirtyLog.memory(size, rs) }]);
  const gate = new RegionGate();
  const owed: number[][] = [];
  const overflow = {
    owe: (_v: unknown, s: number, e: number) => owed.push([s, e]),
    acked: () => {},
    reportOwedNow: () => true,
  };
  const stats = newStats();
  const m = new Mirror(
    volumes,
    gate,
    overflow,
    { maxQueueBytes: 256 * MiB, maxPendingWrites },
    new BufferPool(MiB, 0),
    stats,
  );
  gate.watch(m);
  let frames = 0;
  m.attach({ send: () => frames++, queuedBytes: () => 0, has: (c) => (caps & c) !== 0 });
  const v = volumes.list[0];
  volumes.protect(v, 1);
  v.log.bitmap.setRegions(0, 0); // what write-path marks before a write; only the ack may clear it
  const data = Buffer.alloc(MiB); // one buffer for every write: the link here only counts frames
  const write = (offset: number, len: number) => m.mirror(v, offset, data.subarray(0, len), len);
  return { m, v, write, owed, frames: () => frames };
}

describe('applied drain: the agent mirror', () => {
  it('counts applied bytes drained but clears nothing until the durable ack', () => {
    const { m, v, write } = mirrorOn(Cap.WRITE_ACK | Cap.APPLIED);
    write(0, 4096);
    write(MiB, MiB);
    write(8 * MiB, 64 << 10);
    assert.equal(m.unappliedBytes, MiB + 4096 + (64 << 10));
    m.onApplied(2);
    assert.equal(m.unappliedBytes, 64 << 10, 'two writes applied');
    assert.equal(m.unackedBytes, MiB + 4096 + (64 << 10), 'none acked');
    assert.equal(m.pendingWrites, 3, 'applied writes stay pending');
    assert.equal(m.holds(v, 0), true, 'its region stays held');
    assert.equal(v.log.bitmap.get(0), true, 'its dirty bit stays set');
    m.onApplied(1); // older news: nothing changes
    assert.equal(m.appliedBytes, MiB + 4096);
    m.onAck(1);
    assert.equal(m.appliedBytes, MiB + 4096, 'an ack of applied writes is not counted twice');
    assert.equal(v.log.bitmap.get(0), false, 'the durable ack clears');
    m.onAck(3); // the ack says applied too, for the write no WRITE_APPLIED named
    assert.equal(m.unappliedBytes, 0);
    assert.equal(m.unackedBytes, 0);
    assert.equal(m.appliedBytes, m.ackedBytes);
  });

  it('without WRITE_APPLIED (an older hub) drains on the acks alone', () => {
    const { m, write } = mirrorOn(Cap.WRITE_ACK);
    write(0, MiB);
    write(MiB, MiB);
    assert.equal(m.unappliedBytes, 2 * MiB);
    m.onAck(1);
    assert.equal(m.unappliedBytes, MiB);
    assert.equal(m.appliedBytes, MiB);
  });

  it('holds at most maxPendingWrites: one more is owed, and acks free slots that later writes reuse', () => {
    const { m, v, write, owed, frames } = mirrorOn(Cap.WRITE_ACK | Cap.APPLIED | Cap.DIRTY_REPORT, 4);
    const rs = 64 << 10;
    let seq = 1,
      region = 1;
    write(region * rs, 4096); // one write stays pending into every round: the ring's head moves 3 of 4 slots a round
    for (let round = 0; round < 6; round++) {
      for (let i = 0; i < 3; i++) write(++region * rs, 4096); // a region each
      seq += 3;
      assert.equal(m.pendingWrites, 4);
      assert.equal(m.oldestPending, seq - 3, 'the oldest is the one carried over');
      write(60 * MiB, 4096);
      assert.deepEqual(owed.at(-1), [60 * MiB, 60 * MiB + 4096], 'a fifth write is owed, not sent');
      assert.equal(frames(), seq, 'and never framed');
      m.onApplied(seq - 2);
      assert.equal(m.unappliedBytes, 2 * 4096);
      m.onAck(seq - 1);
      assert.equal(m.pendingWrites, 1);
      assert.equal(m.holds(v, region - 1), false, 'an acked region is free');
      assert.equal(m.holds(v, region), true, 'the unacked one is held');
      assert.equal(m.unappliedBytes, 4096);
      assert.equal(m.oldestPending, seq);
    }
    m.onAck(seq);
    assert.equal(m.pendingWrites, 0);
    assert.equal(m.ackedBytes, 19 * 4096, '19 writes through 4 slots, each counted once');
    assert.equal(m.appliedBytes, m.ackedBytes);
  });

  it('by default holds 2 s of 4 KiB writes at 60,000 a second while durable acks wait: none is owed', () => {
    // the hub's group commit can stall that long behind a recovery volume's writeback; a write
    // past the limit would be owed as a whole region, read back at 16x its bytes
    const { m, write, owed } = mirrorOn(Cap.WRITE_ACK | Cap.APPLIED | Cap.DIRTY_REPORT, DEFAULT_MAX_PENDING_WRITES);
    const n = 120_000;
    for (let i = 0; i < n; i++) write((i % 16384) * 4096, 4096);
    assert.equal(owed.length, 0);
    assert.equal(m.pendingWrites, n);
    m.onAck(n);
    assert.equal(m.ackedBytes, n * 4096);
  });

  it('tells the backlog bound when a write leaves more than queueHoldBytes on the link', () => {
    const { m, write } = mirrorOn(Cap.WRITE_ACK | Cap.APPLIED);
    let queued = 0,
      told = 0;
    m.detach();
    m.attach({ send: () => {}, queuedBytes: () => queued, has: () => true });
    m.queueHoldBytes = 32 * MiB;
    m.queueHigh = () => told++;
    queued = 32 * MiB - 8192;
    write(0, 4096);
    assert.equal(told, 0, 'the write ends at the mark, not past it');
    queued = 32 * MiB - 4095;
    write(4096, 4096);
    assert.equal(told, 1, 'this one goes past it: the fast path must stop before the queue overflows');
    queued = 40 * MiB;
    write(8192, 4096);
    assert.equal(told, 2);
  });

  it('refuses a WRITE_APPLIED beyond the writes sent, and keeps its place across many acks and reconnects', () => {
    const { m, write } = mirrorOn(Cap.WRITE_ACK | Cap.APPLIED);
    assert.throws(() => m.onApplied(1), ProtocolError);
    for (let i = 0; i < 5000; i++) write((i % 1000) * 4096, 4096);
    m.onApplied(4500);
    m.onAck(4200);
    m.onApplied(4800);
    assert.equal(m.unappliedBytes, 200 * 4096);
    m.onAck(5000);
    assert.equal(m.unappliedBytes, 0);
    assert.equal(m.appliedBytes, 5000 * 4096);
    m.detach();
    m.attach({ send: () => {}, queuedBytes: () => 0, has: () => true });
    assert.equal(m.unappliedBytes, 0, 'a new connection starts with nothing unapplied');
    assert.throws(() => m.onApplied(1), ProtocolError, 'seqs start over');
  });

  /** 100 MiB/s of 1 MiB writes for 3 s, each applied within 5 ms; durable acks every 2 s (a slow disk). */
  function slowAcks(drain: 'applied' | 'acked') {
    const { m, write } = mirrorOn(Cap.WRITE_ACK | Cap.APPLIED);
    const c = fakeClock(1_000_000);
    const sources = {
      unackedBytes: () => (drain === 'applied' ? m.unappliedBytes : m.unackedBytes),
      owedBytes: () => 0,
      drainedBytes: () => (drain === 'applied' ? m.appliedBytes : m.ackedBytes),
      baseRttMs: () => 0,
      queuedBytes: () => 0,
    };
    const b = new LagBound(sources, { maxLagMs: 500, ...c });
    b.attach();
    let seq = 0,
      held = 0,
      maxUnacked = 0;
    for (let t = 0; t < 30; t++) {
      for (let i = 0; i < 10; i++) {
        write((seq % 64) * MiB, MiB);
        seq++;
        if (b.wrote()) held++;
        m.onApplied(seq - 1); // one write is always on its way
        b.update();
      }
      maxUnacked = Math.max(maxUnacked, m.unackedBytes);
      if (t % 20 === 19) m.onAck(seq);
      c.advance(SAMPLE_MS);
      b.sample();
    }
    return { held, maxUnacked, st: b.status() };
  }

  it('the bound drains on applied bytes: a hub whose durable acks lag its applies holds no reply', () => {
    const r = slowAcks('applied');
    assert.ok(r.maxUnacked > 100 * MiB, 'the acks did lag');
    assert.equal(r.held, 0, 'no reply held: the hub keeps up, only its fdatasyncs lag');
    assert.ok(r.st.drainBytesPerSec > 50 * MiB, `drain measured on applies: ${r.st.drainBytesPerSec}`);
    // the same hub and guest, drained on the durable acks (the base's bound): the guest is paced
    assert.ok(slowAcks('acked').held > 0, 'drained on acks, replies are held');
  });
});

describe('applied drain: the hub group commit', () => {
  function commit(caps: number) {
    const sent: Buffer[] = [];
    const link = { send: (b: Buffer[]) => sent.push(Buffer.concat(b)), has: (c: number) => (caps & c) !== 0 };
    const gc = new GroupCommit(link, 1000, (e) => assert.fail(e));
    const of = (cmd: Cmd) => sent.filter((f) => f.readUInt16LE(4) === cmd).map((f) => decode(cmd, f.subarray(12)));
    return { gc, sent, of };
  }
  const target = { flushRecovery: async () => {} };

  it('sends one WRITE_APPLIED per gap for the writes applied, none for what an ack said already', async () => {
    const { gc, of } = commit(Cap.WRITE_ACK | Cap.APPLIED);
    for (let i = 0; i < 50; i++) {
      gc.receive();
      gc.applied(target);
    }
    assert.equal(of(Cmd.WRITE_APPLIED).length, 0, 'batched: not one per write');
    await sleep(APPLIED_GAP_MS * 4);
    assert.deepEqual(of(Cmd.WRITE_APPLIED), [{ cmd: Cmd.WRITE_APPLIED, seq: 50 }]);
    gc.receive();
    gc.applied(target);
    await gc.flushNow(); // the ack covers write 51 before the gap ends
    await sleep(APPLIED_GAP_MS * 4);
    assert.deepEqual(of(Cmd.WRITE_ACK), [{ cmd: Cmd.WRITE_ACK, seq: 51 }]);
    assert.equal(of(Cmd.WRITE_APPLIED).length, 1, 'no WRITE_APPLIED for what WRITE_ACK said');
    gc.close();
  });

  it('sends none without the cap, and none after close', async () => {
    const a = commit(Cap.WRITE_ACK);
    a.gc.receive();
    a.gc.applied(target);
    await sleep(APPLIED_GAP_MS * 4);
    assert.equal(a.of(Cmd.WRITE_APPLIED).length, 0);
    a.gc.close();
    const b = commit(Cap.WRITE_ACK | Cap.APPLIED);
    b.gc.receive();
    b.gc.applied(target);
    b.gc.close();
    await sleep(APPLIED_GAP_MS * 4);
    assert.equal(b.sent.length, 0);
  });
});
