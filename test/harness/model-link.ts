// A model link for the resync governor's unit tests and tools/bench/gov-model.ts: a clocked
// simulation, no sockets, so a policy change shows its queue and utilisation in milliseconds.
import { ResyncGovernor } from '../../src/agent/resync-governor';
import { fakeClock } from './fake-clock';

const MiB = 1 << 20;

/**
 * The governor against a model link: `rate` bytes/s, `baseMs` round trip, one FIFO queue that
 * answers and PINGs share; a hub keeping 16 reads of 1 MiB outstanding (a new one as each
 * answer arrives); an idle guest. Every ms: the delay a mirrored write sent now would queue
 * (the worst after `settleMs` is returned), and the resync rate once `rateAt` ms have passed.
 * `stalls`: [at, ms] pairs, the link carrying nothing for that long (a retransmit timeout, a hub
 * stopped in GC or a sync): what is queued, PONGs included, waits that much more.
 */
export function overLink(
  rate: number,
  baseMs: number,
  ms: number,
  settleMs: number,
  rateAt: number,
  untilMs = ms,
  stalls: [number, number][] = [],
) {
  const c = fakeClock();
  let linkFree = 0,
    arrived = 0,
    issued = 0,
    worst = 0,
    rateThen = 0,
    bytes = 0;
  const arrivals: number[] = []; // when each answer sent has crossed the link
  const pongs: { at: number; due: number }[] = [];
  const answer = [Buffer.alloc(1 << 20, 1)];
  const link = {
    send: (bufs: Buffer[], done?: () => void) => {
      const n = bufs.reduce((k, b) => k + b.length, 0);
      linkFree = Math.max(linkFree, c.now()) + (n * 1000) / rate;
      arrivals.push(linkFree);
      bytes += n;
      done?.();
    },
  };
  const g = new ResyncGovernor({ floorRate: MiB, ceilRate: 0, guestWrites: () => 0, ...c });
  let nonce = -1; // unique, as link/ping-nonce.ts makes them
  g.probe = (at) => {
    nonce = Math.max(at, nonce + 1);
    pongs.push({ at: nonce, due: Math.max(linkFree, at) + baseMs });
    return nonce;
  };
  for (let t = 0; t < ms; t++) {
    for (; arrivals.length > 0 && arrivals[0] <= c.now(); arrived++) arrivals.shift();
    for (; issued - arrived < 16; issued++) g.send(link, answer);
    for (const [at, stallMs] of stalls) {
      if (at !== t) continue;
      linkFree = Math.max(linkFree, c.now()) + stallMs;
      for (let i = 0; i < arrivals.length; i++) arrivals[i] += stallMs;
      for (const p of pongs) p.due += stallMs;
    }
    c.advance(1);
    pongs.sort((a, b) => a.due - b.due);
    while (pongs.length > 0 && pongs[0].due <= c.now()) g.sample(pongs.shift()!.at);
    if (t >= settleMs && t < untilMs) worst = Math.max(worst, linkFree - c.now());
    if (t === rateAt) rateThen = g.rate;
  }
  return { worst, rateThen, bytes };
}
