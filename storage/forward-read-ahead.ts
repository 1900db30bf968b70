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

export class ForwardReadAhead {
  private end = -1; // where the last read ended
  private run = 0; // reads in a row that began where the one before ended
  private ahead = 0; // asked for up to here

  constructor(
    private readonly fd: () => number,
    /** The volume's size now: it grows under an online resize, and the window with it. */
    private readonly sizeBytes: () => number,
  ) {}

  /** A read of [start, end) is about to be made. */
  reading(start: number, end: number): void {
    this.run = start === this.end ? this.run + 1 : 0;
    this.end = end;
    if (this.run < RUN_MIN) {
      this.ahead = end;
      return;
    }
    const window = Math.min(WINDOW_MAX, Math.max(WINDOW_MIN, 8 * (end - start)));
    if (this.ahead - end >= window / 2) return;
    const from = Math.max(this.ahead, end),
      to = Math.min(this.sizeBytes(), end + window);
    if (to > from) adviseWillNeed(this.fd(), from, to - from);
    this.ahead = to;
  }
}
