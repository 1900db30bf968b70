// Read ahead for a descriptor advised RANDOM, when its reads walk forward. The journal reads
// before-images through such a descriptor, so that its reads leave order-0 pages and not large
// folios under the guest's small writes (BENCHMARKS "Page-cache folios"). But then the kernel
// never reads ahead, and a guest overwriting a cold volume sequentially cost the hub one
// synchronous disk read per write: 4 KiB sequential writes at qd16 ran at a third of their
// speed without the journal, 1 MiB ones lost a quarter (BENCHMARKS Round 19). Once reads
// follow each other, the window ahead of them is asked for with WILLNEED: read in the
// background, in order-0 pages, with no readahead mark for a later read to trip over (the
// kernel's own readahead on a plain descriptor overshoots in large folios).
import { adviseWillNeed } from './fileio';

const WINDOW_MIN = 1 << 20; // ahead of a forward run: 8 reads' worth, within these bounds
const WINDOW_MAX = 8 << 20;
const RUN_MIN = 2; // reads that each began where the last ended before the run counts
// Forward runs followed at once: two guests' streams (or one guest's two files) interleave, and
// with one slot each read of the other stream restarted the run, so neither read ahead.
const STREAMS = 4;

/** One forward run: where its last read ended, its length in reads, and how far it asked for. */
interface Stream {
  end: number;
  run: number;
  ahead: number;
  used: number; // when it was last read (a counter): the oldest slot goes to a new run
}

export class ForwardReadAhead {
  private readonly streams: Stream[] = Array.from({ length: STREAMS }, () => ({ end: -1, run: 0, ahead: 0, used: 0 }));
  private reads = 0;

  constructor(
    private readonly fd: () => number,
    /** The volume's size now: it grows under an online resize, and the window with it. */
    private readonly sizeBytes: () => number,
  ) {}

  /** A read of [start, end) is about to be made. */
  reading(start: number, end: number): void {
    let s = this.streams[0]; // the run this read continues, else the slot read longest ago
    for (const x of this.streams) {
      if (x.end === start) {
        s = x;
        break;
      }
      if (x.used < s.used) s = x;
    }
    s.run = s.end === start ? s.run + 1 : 0;
    s.end = end;
    s.used = ++this.reads;
    if (s.run < RUN_MIN) {
      s.ahead = end;
      return;
    }
    const window = Math.min(WINDOW_MAX, Math.max(WINDOW_MIN, 8 * (end - start)));
    if (s.ahead - end >= window / 2) return;
    const from = Math.max(s.ahead, end),
      to = Math.min(this.sizeBytes(), end + window);
    if (to > from) adviseWillNeed(this.fd(), from, to - from);
    s.ahead = to;
  }
}
