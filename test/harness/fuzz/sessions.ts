// The fuzz workers and their byte-level sessions: whole or trickled hostile streams, truncated
// handshakes, silent peers the heartbeat must drop, and PING floods from a peer that does not read.
// Sessions that claim volumes are in claim-sessions.ts.
import { ErrorCode, ALL_CAPS, Cmd, Limits, encodeHello } from '../../../protocol';
import type { Rng } from '../prng';
import { sleep } from '../util';
import { HubModel } from './hub-model';
import { FrameGen, KILL_HEADER } from './frame-gen';
import { compose } from './stream';
import { bump } from './result';
import { ownerSession, claimantSession } from './claim-sessions';
import type { FuzzRun } from './run';

/** A stream of valid then hostile frames, sent whole or trickled. */
async function streamSession(run: FuzzRun, rng: Rng, sc: string, trickle: boolean): Promise<void> {
  const peer = await run.connect();
  if (!peer) return;
  const g = new FrameGen(rng, run.ctx),
    m = new HubModel(run.ctx);
  if (rng.chance(0.6)) await run.sendFrames(peer, m, [g.hello()]);
  const maxFrames = trickle ? 60 : Math.max(2, run.o.frames - run.frames);
  const opts = { maxFrames, allowBig: !trickle && run.o.frames >= 100_000, maxPad: 256 * 1024, junk: !trickle };
  const built = compose(rng, g, m, opts, run.budget);
  await run.finishStream(sc, rng, peer, m, built, trickle);
}

/** Connect, send part of a handshake, then hang a while, FIN, or reset. */
async function truncatedSession(run: FuzzRun, rng: Rng): Promise<void> {
  const peer = await run.connect();
  if (!peer) return;
  const g = new FrameGen(rng, run.ctx),
    m = new HubModel(run.ctx);
  const f = rng.chance(0.7) ? g.hello() : g.anyFrame(m);
  const cut = rng.chance(0.6) ? rng.int(Math.min(12, f.length)) : rng.between(12, Math.max(12, f.length - 1));
  await run.sendFrames(peer, m, [f.subarray(0, cut)]);
  const how = rng.weighted({ reset: 2, fin: 4, hang: 3 });
  if (how === 'reset') {
    await sleep(rng.int(50));
    peer.destroy();
    bump(run.res.scenarios, 'truncated-reset');
    run.res.sessions++;
    return;
  }
  if (how === 'hang') await sleep(rng.between(200, 2000));
  const end = m.error ? 'error' : 'fin';
  await run.finishStream(`truncated-${how}`, rng, peer, m, { parts: [], frames: 0, end, big: false }, false);
}

/** HELLO with the PING cap, then silence: the hub must drop the session (3 heartbeats). */
export async function silentSession(run: FuzzRun, rng: Rng): Promise<void> {
  const peer = await run.connect();
  if (!peer) return;
  const g = new FrameGen(rng, run.ctx),
    m = new HubModel(run.ctx);
  await run.sendFrames(peer, m, [encodeHello(1, ALL_CAPS, Limits.maxPayload, g.name(20, 'silent-'))]);
  const ended = await peer.until(() => peer.closed, Math.max(run.hangMs, 15_000));
  const t = peer.terminal();
  if (ended && t && t.code === ErrorCode.TIMEOUT) run.res.silentDropped++;
  const expect = {
    code: ErrorCode.TIMEOUT,
    prefix: 'agent silent for ',
    sync: false,
    why: 'heartbeat: 3 silent intervals',
  };
  run.judge('silent', peer, m, expect, ended, 'hub');
  peer.destroy();
}

/** A peer that does not read while it sends PINGs: the hub answers every one once it reads again. */
async function floodSession(run: FuzzRun, rng: Rng): Promise<void> {
  const peer = await run.connect();
  if (!peer) return;
  run.res.floods++;
  peer.sock.pause();
  const g = new FrameGen(rng, run.ctx),
    m = new HubModel(run.ctx);
  const n = Math.max(1, Math.min(Math.floor((run.o.floodBytes ?? 512 * 1024) / 20), run.o.frames - run.frames));
  const pings = Buffer.concat(Array.from({ length: n }, () => g.ping()));
  m.feed(pings);
  run.frames += n;
  run.res.bytes += pings.length;
  void peer.write(pings);
  await sleep(rng.between(50, 500));
  peer.sock.resume();
  const all = await peer.until(() => peer.closed || peer.msgs.length >= n, run.hangMs);
  run.res.floodPongs += peer.msgs.filter((x) => x.cmd === Cmd.PONG).length;
  if (!all) {
    run.judge('flood', peer, m, null, false, 'hub');
    peer.destroy();
    return;
  }
  m.feed(KILL_HEADER);
  run.frames++;
  await run.finishStream('flood', rng, peer, m, { parts: [KILL_HEADER], frames: 0, end: 'error', big: false }, false);
}

// Every worker starts with one fixed scenario, so even a small budget covers each kind.
const FIRST = ['claimant', 'owner', 'flood', 'truncated', 'trickle', 'claimant', 'owner', 'stream'] as const;

/** One fuzz worker: sessions one after another until the frame budget is spent or the hub crashed. */
export async function worker(run: FuzzRun, i: number, rng: Rng): Promise<void> {
  const volumes = run.ctx.fuzzVolumes.length;
  let first = true;
  while (run.frames < run.o.frames && !run.crashed()) {
    let sc = first
      ? FIRST[i % FIRST.length]
      : rng.weighted({
          stream: 64,
          trickle: 6,
          owner: volumes ? 10 : 0,
          claimant: 5,
          truncated: 7,
          flood: run.floodActive === 0 ? 0.4 : 0,
        });
    first = false;
    if (sc === 'owner' && !volumes) sc = 'stream';
    if (sc === 'flood' && run.floodActive > 0) sc = 'stream';
    try {
      switch (sc) {
        case 'stream':
          await streamSession(run, rng, 'stream', false);
          break;
        case 'trickle':
          await streamSession(run, rng, 'trickle', true);
          break;
        case 'owner':
          await ownerSession(run, rng, i);
          break;
        case 'claimant':
          await claimantSession(run, rng);
          break;
        case 'truncated':
          await truncatedSession(run, rng);
          break;
        case 'flood':
          run.floodActive++;
          try {
            await floodSession(run, rng);
          } finally {
            run.floodActive--;
          }
          break;
      }
    } catch (e) {
      run.fail(`${sc}: fuzzer error: ${(e as Error).stack}`);
    }
  }
}
