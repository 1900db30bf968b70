// Read ahead for a descriptor advised RANDOM, when its reads walk forward. The journal reads
// before-images through such a descriptor, so that a random 4 KiB read leaves one order-0 page
// and not a large folio under the guest's small writes (BENCHMARKS "Page-cache folios"). But
// then the kernel never reads ahead, and a guest overwriting a cold volume sequentially cost
// the hub one synchronous disk read per write, on its event loop: 4 KiB sequential writes at
// qd16 ran at a third of their speed without the journal (BENCHMARKS Round 19). Once reads
// follow each other, the window ahead of them is asked for with WILLNEED: read in the background,
// in order-0 pages. Only for small reads: a large one (1 MiB writes) is its own read-ahead, and
// the window's pages, allocated on the event loop, made 1 MiB sequential writes slower.
import { adviseWillNeed } from './fileio';

const WINDOW = 1 << 20; // asked for ahead of a forward run; again once half of it is left
const RUN_MIN = 2; // reads that each began where the last ended before the run counts
const SMALL_MAX = 64 << 10; // larger reads neither count in a run nor get a window

export class ForwardReadAhead {
  private end = -1; // where the last read ended
  private run = 0; // reads in a row that began where the one before ended
  private ahead = 0; // asked for up to here

  constructor(
    private readonly fd: () => number,
    private readonly sizeBytes: number,
    private readonly window = WINDOW,
  ) {}

  /** A read of [start, end) is about to be made. */
  reading(start: number, end: number): void {
    this.run = start === this.end && end - start <= SMALL_MAX ? this.run + 1 : 0;
    this.end = end;
    if (this.run < RUN_MIN) {
      this.ahead = end;
      return;
    }
    if (this.ahead - end >= this.window / 2) return;
    const from = Math.max(this.ahead, end),
      to = Math.min(this.sizeBytes, end + this.window);
    if (to > from) adviseWillNeed(this.fd(), from, to - from);
    this.ahead = to;
  }
}
