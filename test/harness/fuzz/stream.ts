// Composing one fuzz stream so that its ending is predictable (a fatal error the model names, or a
// frame left incomplete and then our FIN), and sending it whole or trickled in small pieces.
import type { Rng } from '../prng';
import { sleep } from '../util';
import type { Peer } from './peer';
import type { HubModel } from './hub-model';
import { FrameGen, KILL_HEADER } from './frame-gen';
import { hostileFrame } from './hostile-frames';

/** A composed stream: its bytes, frame count, and how it must end (hub ERROR+close, or our FIN). */
export type Built = {
  parts: Buffer[];
  frames: number;
  end: 'error' | 'fin';
  big: boolean;
  cut?: number;
  junk?: Buffer;
};

/** The campaign-wide budgets a stream draws from (shared by every worker). */
export interface StreamBudget {
  bigFrames: number; // frames of up to 32 MiB still allowed
  bigActive: number; // big frames being sent now (at most one)
  bigDirty: { bigBytes: number }; // bytes of ~1 MiB DIRTY_REPORTs still allowed
  bigSent: number; // big frames sent so far
}

export interface ComposeOpts {
  maxFrames: number;
  allowBig: boolean;
  maxPad: number;
  junk: boolean;
}

/** Build a stream ending in a predictable way: fatal error, or a frame left incomplete (then FIN). */
export function compose(rng: Rng, g: FrameGen, m: HubModel, opts: ComposeOpts, budget: StreamBudget): Built {
  const parts: Buffer[] = [];
  const base = m.pos; // cut offsets are relative to this stream
  let n = 0;
  const add = (b: Buffer, counts = true) => {
    if (!b.length) return;
    parts.push(b);
    if (counts) n++;
    m.feed(b);
  };
  const prefix = rng.chance(0.35) ? rng.int(4) : rng.chance(0.7) ? rng.between(4, 120) : rng.between(120, 1500);
  const limit = Math.max(1, Math.min(prefix, opts.maxFrames - 1));
  for (let i = 0; i < limit && !m.done; i++) add(g.valid(m));
  for (let t = 0; t < 4 && !m.done && !m.waiting; t++) add(hostileFrame(g, m, budget.bigDirty));
  if (m.error && !m.error.sync) return { parts, frames: n, end: 'error', big: false, cut: m.errorAt - base };
  let big = false;
  if (!m.error) {
    const w = m.waiting;
    if (w && 'payload' in w) {
      if (w.payload <= opts.maxPad) add(rng.bytes(w.payload), false);
      else if (opts.allowBig && budget.bigFrames > 0 && budget.bigActive === 0 && !m.taint) {
        // One at a time: the hub reassembles up to 32 MiB + 64 of payload.
        budget.bigFrames--;
        budget.bigSent++;
        budget.bigActive++;
        big = true;
        add(Buffer.alloc(w.payload, 0x33), false);
      } else return { parts, frames: n, end: 'fin', big };
    }
    if (!m.error) add(KILL_HEADER); // completes a partial header into a fatal one, or follows accepted frames
  }
  // Bytes after a fatal frame are never looked at. (Not when trickling: a write that starts after the
  // hub's RST makes Node drop the socket before reading the ERROR frame already received.)
  const junk = opts.junk && m.error?.sync && rng.chance(0.3) ? rng.bytes(rng.between(1, 2048)) : undefined;
  // Sync errors: the bytes of the fatal item after the fatal byte go too, unless trickling.
  return { parts, frames: n, end: 'error', big, cut: opts.junk && m.error?.sync ? undefined : m.errorAt - base, junk };
}

/** Send a built stream; returns the bytes sent. Trickled: small pieces with pauses. */
export async function send(peer: Peer, built: Built, rng: Rng, trickle: boolean): Promise<number> {
  let all = Buffer.concat(built.parts);
  // Streams are cut just past the byte the model says ends the session (see Built).
  if (built.cut !== undefined && built.cut >= 0) all = all.subarray(0, built.cut);
  if (built.junk) all = Buffer.concat([all, built.junk]);
  if (!trickle) {
    await peer.write(all);
    return all.length;
  }
  // Small pieces with pauses: the hub's framer sees frames split at every possible place.
  let off = 0;
  while (off < all.length && !peer.closed) {
    const n = Math.min(all.length - off, rng.chance(0.5) ? rng.between(1, 13) : rng.between(14, 300));
    await peer.write(all.subarray(off, off + n));
    off += n;
    if (rng.chance(0.3)) await sleep(rng.int(3));
  }
  return all.length;
}
