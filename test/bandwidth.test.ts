// The agent's bandwidth control on a fake clock: the link pacer (--max-rate, writes first, the
// resync share) and the resync governor (PING round trips in, resync rate out).
import { strict as assert } from 'node:assert';
import { LinkPacer } from '../src/link/pacer';
import { ResyncGovernor, TARGET_DELAY_MS } from '../src/agent/resync-governor';
import { fakeClock } from './harness/fake-clock';
import { overLink } from './harness/model-link';

/** A clock and timers that move only when told. */
function sink() {
  const sent: { bytes: number; bulk: boolean }[] = [];
  return {
    sent,
    link: {
      send: (bufs: Buffer[], done?: () => void) => {
        sent.push({ bytes: bufs.reduce((n, b) => n + b.length, 0), bulk: bufs[0][0] === 1 });
        done?.();
      },
      queuedBytes: () => 0,
      has: () => true,
    },
  };
}

const frame = (n: number, bulk: boolean) => [Buffer.alloc(n, bulk ? 1 : 0)];
const MiB = 1 << 20;

describe('link pacer (--max-rate)', () => {
  it('sends at once under the rate, and never more than the rate plus one burst', () => {
    const c = fakeClock(),
      s = sink();
    const p = new LinkPacer({ maxRate: 4 * MiB, resyncShare: 0.3, maxResyncRate: 0, ...c }).attach(s.link);
    p.send(frame(4096, false));
    assert.equal(s.sent.length, 1, 'an idle pacer holds nothing');
    for (let sec = 0; sec < 10; sec++) {
      for (let i = 0; i < 100; i++) p.send(frame(64 << 10, false)); // 6.25 MiB offered per second
      c.advance(1000);
    }
    const total = s.sent.reduce((n, f) => n + f.bytes, 0);
    assert.ok(total <= 10 * 4 * MiB + 256 * 1024 + (64 << 10), `sent ${total} in 10 s at 4 MiB/s`);
    assert.ok(total >= 9 * 4 * MiB, `the cap is used (${total})`);
    assert.ok(p.queuedBytes() > 0, 'what does not fit waits, counted for the mirror');
    p.detach();
    assert.equal(p.queuedBytes(), 0);
  });

  it('writes go first, resync keeps its share under contention and takes the idle link', () => {
    const c = fakeClock(),
      s = sink();
    const p = new LinkPacer({ maxRate: 10 * MiB, resyncShare: 0.3, maxResyncRate: 0, ...c }).attach(s.link);
    for (let t = 0; t < 5000; t += 10) {
      for (let i = 0; i < 2; i++) p.send(frame(64 << 10, false)); // 12.5 MiB/s of writes: more than the link
      if (p.heldResyncBytes < 4 * MiB) p.sendBulk(frame(1 << 20, true));
      c.advance(10);
    }
    const bulk = s.sent.filter((f) => f.bulk).reduce((n, f) => n + f.bytes, 0);
    const writes = s.sent.filter((f) => !f.bulk).reduce((n, f) => n + f.bytes, 0);
    assert.ok(
      bulk >= 0.25 * (bulk + writes) && bulk <= 0.4 * (bulk + writes),
      `resync share ${bulk / (bulk + writes)}`,
    );
    const before = bulk;
    p.detach();
    p.attach(s.link);
    for (let t = 0; t < 2000; t += 10) {
      if (p.heldResyncBytes < 4 * MiB) p.sendBulk(frame(1 << 20, true));
      c.advance(10);
    }
    const idle = s.sent.filter((f) => f.bulk).reduce((n, f) => n + f.bytes, 0) - before;
    assert.ok(idle >= 1.8 * 10 * MiB, `resync alone uses the link (${idle} in 2 s)`);
  });
});

describe('resync governor', () => {
  it('cuts the resync rate while the link queue is long, to its floor at worst, and grows it back', () => {
    const c = fakeClock(),
      s = sink();
    const g = new ResyncGovernor({ floorRate: MiB, ceilRate: 20 * MiB, ...c });
    g.send(s.link, frame(1 << 20, true));
    const start = g.rate;
    g.sample(c.now() - 5); // base round trip 5 ms
    c.advance(PROBE);
    for (let i = 0; i < 20; i++) {
      g.send(s.link, frame(4096, true));
      g.sample(c.now() - 5 - 4 * TARGET_DELAY_MS);
      c.advance(PROBE);
    }
    assert.ok(g.rate < start && g.rate >= MiB, `cut to ${g.rate}`);
    assert.equal(g.rate, MiB, 'a long queue drives it to the floor');
    for (let i = 0; i < 100; i++) {
      g.send(s.link, frame(4096, true));
      g.sample(c.now() - 5);
      c.advance(PROBE);
    }
    assert.equal(g.rate, 20 * MiB, 'a short queue lets it grow to the ceiling');
  });

  it('after a cut to the floor, a link without queue gets resync back to full speed within ten samples', () => {
    // Issue 17: a 1 MiB write job overflowed into dirty regions, the mirrored writes' queue cut
    // resync to its floor, and 10 % steps took ~6 s back to the link's speed (copies equal 12 s
    // after the job instead of 2 s).
    const c = fakeClock(),
      s = sink();
    const g = new ResyncGovernor({ floorRate: MiB, ceilRate: 0, ...c });
    const probes: number[] = [];
    g.probe = (at) => probes.push(at);
    g.send(s.link, frame(1 << 20, true));
    g.sample(c.now() - 5);
    c.advance(PROBE);
    for (let i = 0; i < 10; i++) {
      g.send(s.link, frame(4096, true));
      g.sample(c.now() - 5 - 4 * TARGET_DELAY_MS);
      c.advance(PROBE);
    }
    assert.equal(g.rate, MiB, 'the long queue drove it to the floor');
    for (let i = 0; i < 10; i++) {
      g.send(s.link, frame(4096, true)); // an answer, and the probe right behind it
      c.advance(5);
      g.sample(probes[probes.length - 1]); // its PONG: no queue
      c.advance(PROBE - 5);
    }
    assert.ok(g.rate >= 512 * MiB, `back to ${(g.rate / MiB).toFixed(0)} MiB/s after 10 samples`);
    // near the target it grows gently again, and a queue over it still cuts
    const before = g.rate;
    g.send(s.link, frame(4096, true));
    g.sample(c.now() - 5 - 0.5 * TARGET_DELAY_MS);
    assert.ok(g.rate > before && g.rate < 1.1 * before, 'under 10 % growth at half the target delay');
    c.advance(PROBE);
    g.send(s.link, frame(4096, true));
    g.sample(c.now() - 5 - 3 * TARGET_DELAY_MS);
    assert.ok(g.rate < before, 'a queue over the target cuts');
  });

  it('with the guest idle, probes every 20 ms and doubles per round trip; a guest write restores the rate', () => {
    // Issue 17: after the guest's job, nothing waits behind resync, yet it slow-started from the
    // floor the job left it at, one doubling per 100 ms (1-1.3 s of the copies' 2.4-3.1 s to equal).
    const c = fakeClock(),
      s = sink();
    let writes = 0,
      pings = 0;
    const g = new ResyncGovernor({ floorRate: MiB, ceilRate: 0, guestWrites: () => writes, ...c });
    g.probe = () => pings++;
    g.sample(c.now() - 5); // base round trip 5 ms
    for (let i = 0; i < 10; i++) {
      writes += 100; // the job writes on
      g.send(s.link, frame(4096, true));
      c.advance(PROBE);
      g.sample(c.now() - 5 - 4 * TARGET_DELAY_MS);
    }
    assert.equal(g.rate, MiB, "the guest's queue drove it to the floor");
    for (let i = 0; i < 16; i++) g.send(s.link, frame(1 << 20, true)); // the hub's reads after the job
    assert.ok(g.status().heldBytes >= 14 * MiB, 'held at the floor rate');
    c.advance(20);
    g.sample(c.now() - 5); // the first sample without a guest write
    assert.equal(g.status().guestIdle, true);
    const pings0 = pings;
    for (let t = 0; t < 300; t += 5) {
      c.advance(5);
      g.send(s.link, frame(4096, true)); // answers flow: probes go out
    }
    assert.ok(pings - pings0 >= 12, `a probe every 20 ms while idle: ${pings - pings0} in 300 ms`);
    for (let i = 0; i < 12; i++) {
      c.advance(20);
      g.sample(c.now() - 5);
    }
    assert.ok(g.rate >= 1024 * MiB, `full speed 12 round trips after the job: ${(g.rate / MiB).toFixed(0)} MiB/s`);
    assert.equal(g.status().heldBytes, 0, 'the held answers left as the rate grew');
    writes++;
    c.advance(20);
    g.sample(c.now() - 5);
    assert.equal(g.status().guestIdle, false, 'a guest write ends it');
    assert.ok(g.rate <= 2 * MiB, `the rate from before: ${g.rate}`);
    assert.equal(g.idleBoosts, 1);
  });

  it('a fresh resync with an idle guest probes while its answers are held, and is at full speed within 250 ms', () => {
    // Issue 17: a 1 GiB initial sync spent its first 0.4 s at 2-8 MiB/s. The hub's 16 reads were
    // answered at once and held to the starting rate; the next probe waited for the token timer
    // (500 ms for 1 MiB at 2 MiB/s), and the first sample could not tell the guest idle.
    const c = fakeClock(),
      s = sink();
    const pongs: number[] = []; // due times of PONGs for PINGs in flight
    const g = new ResyncGovernor({ floorRate: MiB, ceilRate: 0, guestWrites: () => 7, ...c });
    g.probe = () => pongs.push(c.now());
    for (let i = 0; i < 16; i++) g.send(s.link, frame(1 << 20, true));
    assert.ok(g.status().heldBytes >= 14 * MiB, 'held to the starting rate');
    for (let t = 0; t < 250; t++) {
      c.advance(1);
      while (pongs.length > 0 && pongs[0] + 2 <= c.now()) g.sample(pongs.shift()!); // a 2 ms link
    }
    assert.equal(g.status().guestIdle, true, 'idle from the first sample: no write since resync started');
    assert.equal(g.status().heldBytes, 0, 'every held answer left');
    assert.ok(g.rate >= 512 * MiB, `full speed within 250 ms: ${(g.rate / MiB).toFixed(0)} MiB/s`);
  });

  it('with the guest idle on a slow link, doubles at most once per round trip', () => {
    const c = fakeClock(),
      s = sink();
    const g = new ResyncGovernor({ floorRate: MiB, ceilRate: 0, guestWrites: () => 0, ...c });
    g.send(s.link, frame(4096, true));
    const start = g.rate;
    for (let i = 0; i < 30; i++) {
      c.advance(20); // samples every 20 ms, each a 200 ms round trip (no queue)
      g.send(s.link, frame(4096, true));
      g.sample(c.now() - 200);
    }
    assert.ok(g.rate <= start * 8, `600 ms of 200 ms round trips: at most 3 doublings, ${g.rate / start}x`);
  });

  it("on a 5 MiB/s link, an idle guest's resync opening queues a write at most 1.5 answers long", () => {
    // The opening is ACK-clocked (resync-governor.ts): its first PING leaves behind the first
    // answer, and on this link comes back 200 ms late, which ends the opening with a cut. Growth
    // clocked by a timer instead doubled on PINGs that slipped between bursts (the ninth session's
    // 5 ms probes: a mirrored write waited 2.5 s in bandwidth.e2e).
    const { worst, bytes } = overLink(5 * MiB, 1, 6000, 0, 0, 400);
    // one answer is 200 ms on this link; the code before the opening queued 875 ms here
    assert.ok(worst <= 3 * TARGET_DELAY_MS, `a write would have queued ${worst.toFixed(0)} ms in the first 400 ms`);
    assert.ok(bytes >= 0.6 * 5 * MiB * 6, `resync still uses the link: ${(bytes / MiB).toFixed(1)} MiB in 6 s`);
  });

  it("on slow links, an idle guest's resync keeps the queue near one answer after its opening, and uses the link", () => {
    // Growth is capped at 1.25x the link's delivery rate, measured by PONGs that came back behind
    // a queue. Without the cap the idle probes (every 20 ms, slipping between answers) doubled
    // the rate with nothing crossing: 1-2.5 s of answers queued on a 5 MiB/s link.
    for (const [mibs, baseMs] of [
      [5, 1],
      [5, 20],
      [8, 1],
      [20, 1],
    ]) {
      const rate = mibs * MiB;
      const { worst, bytes } = overLink(rate, baseMs, 10_000, 1000, 0);
      const answerMs = (MiB * 1000) / rate;
      assert.ok(
        worst <= 2 * answerMs + 2 * TARGET_DELAY_MS,
        `${mibs} MiB/s, ${baseMs} ms: a write would have queued ${worst.toFixed(0)} ms`,
      );
      assert.ok(bytes >= 0.75 * rate * 10, `${mibs} MiB/s: ${(bytes / rate / 10).toFixed(2)} of the link used`);
    }
  });

  it('a stall on a fast link (its delivery samples far too low) does not hold the resync under the link', () => {
    // Three 300 ms stalls 5.5 s apart on a 2 GiB/s link: each queued PONG measured the stall, not
    // the link. When those samples capped growth until a higher queued one came (none does at a
    // rate the link carries without queue), the resync stayed at 148 MiB/s.
    const link = 2048 * MiB;
    const stalls: [number, number][] = [
      [2000, 300],
      [7500, 300],
      [13000, 300],
    ];
    for (const at of [5000, 12000, 20000]) {
      const { rateThen } = overLink(link, 1, at + 1, 0, at, at + 1, stalls);
      assert.ok(rateThen >= link, `${at} ms: resync at ${(rateThen / MiB).toFixed(0)} MiB/s on a 2048 MiB/s link`);
    }
  });

  it("on a fast link with a short round trip, an idle guest's resync is at full speed within 120 ms", () => {
    // Issue 17: the initial sync's slow start took ~0.28 s to the link's rate on loopback, one
    // doubling per 20 ms; now one per round trip that carried answers.
    const { rateThen } = overLink(2048 * MiB, 0.2, 121, 121, 120);
    assert.ok(rateThen >= 1024 * MiB, `${(rateThen / MiB).toFixed(0)} MiB/s after 120 ms`);
  });

  it('the opening: a bare PING ahead of the answers, one behind them; off when asked; a reconnect opens again', () => {
    const c = fakeClock(),
      s = sink();
    const probes: number[] = [];
    let nonce = -1;
    const probe = (at: number) => {
      nonce = Math.max(at, nonce + 1);
      probes.push(nonce);
      return nonce;
    };
    const g = new ResyncGovernor({ floorRate: MiB, ceilRate: 0, guestWrites: () => 0, ...c });
    g.probe = probe;
    g.send(s.link, frame(1 << 20, true));
    assert.equal(probes.length, 2, 'the base PING, then the one behind the first answer');
    c.advance(1);
    g.sample(probes[0]); // the base: 1 ms
    const before = g.rate;
    g.sample(probes[1]); // behind 1 MiB, no queue
    assert.equal(g.rate, 2 * before, 'doubled on the PING that carried an answer');
    g.detach();
    probes.length = 0;
    g.send(s.link, frame(1 << 20, true)); // a new connection within a second
    assert.equal(probes.length, 1, 'opens again: a PING behind the first answer (the base is known)');
    const off = new ResyncGovernor({ floorRate: MiB, ceilRate: 0, guestWrites: () => 0, opening: false, ...c });
    probes.length = 0;
    off.probe = probe;
    off.send(s.link, frame(1 << 20, true));
    c.advance(1);
    off.sample(probes[0]);
    assert.equal(probes.length, 1, 'without the opening: the regular probe only');
    assert.equal(off.status().heldBytes, 0);
  });

  it("a connection's base round trip comes from a bare PING on the idle link, not from PINGs behind a burst", () => {
    const c = fakeClock(),
      s = sink();
    const probes: number[] = [];
    let nonce = -1;
    const g = new ResyncGovernor({ floorRate: MiB, ceilRate: 0, guestWrites: () => 0, ...c });
    g.probe = (at) => {
      nonce = Math.max(at, nonce + 1);
      probes.push(nonce);
      return nonce;
    };
    g.attach();
    assert.equal(probes.length, 1, 'a bare PING as the connection starts');
    c.advance(2);
    g.sample(probes[0]); // the idle link: 2 ms
    // then a burst of mirrored writes fills the link; the backlog bound's PINGs queue behind it
    for (let i = 0; i < 20; i++) {
      const sentAt = c.now();
      c.advance(100);
      g.sample(sentAt - 1900); // 2 s round trips
    }
    assert.equal(g.baseRttMs, 2, 'the queue behind the burst is not the base');
    assert.equal(g.delayMs, 2000 - 2, 'it is queueing delay');
    // a reconnect measures again (it may be another hub)
    g.detach();
    g.attach();
    assert.equal(g.baseRttMs, 0, 'not known on the new connection until its PING is back');
    c.advance(7);
    g.sample(probes[probes.length - 1]);
    assert.equal(g.baseRttMs, 7);
    // an idle link is probed once per 5 s, never while resync flows
    const n = probes.length;
    g.linkIdle();
    assert.equal(probes.length, n, 'the base is fresh');
    c.advance(5000);
    g.linkIdle();
    g.linkIdle();
    assert.equal(probes.length, n + 1, 'one probe when the base is 5 s old');
    c.advance(5000);
    g.send(s.link, frame(4096, true)); // resync flows: its own probes measure the link
    const m = probes.length;
    g.linkIdle();
    assert.equal(probes.length, m, 'no idle probe while resync flows');
    // nor while answers wait for their turn: at the floor's rate one may wait past ACTIVE_MS
    for (let i = 0; i < 8; i++) g.send(s.link, frame(MiB, true));
    assert.ok(g.status().heldBytes > 0, 'answers held');
    c.advance(5000);
    assert.ok(g.status().heldBytes > 0, 'answers still held 5 s on');
    const k = probes.length;
    g.linkIdle();
    assert.equal(probes.length, k, 'no idle probe with answers held');
  });

  it('holds answers to its rate and releases them in order; detach releases what it held', () => {
    const c = fakeClock(),
      s = sink();
    const g = new ResyncGovernor({ floorRate: MiB, ceilRate: MiB, ...c });
    let done = 0;
    for (let i = 0; i < 8; i++) g.send(s.link, frame(1 << 20, true), () => done++);
    assert.ok(s.sent.length <= 2, 'a burst at most');
    c.advance(3000);
    assert.ok(s.sent.length >= 3 && s.sent.length <= 5, `about 1 MiB/s: ${s.sent.length} in 3 s`);
    g.detach();
    assert.equal(done, 8, 'every answer released, sent or not');
  });
});

const PROBE = 100;
