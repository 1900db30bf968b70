// The encryption alarm's reads of a recovery volume bring in only the pages they read. Without
// the no-readahead advice, a read next to pages the writes left cached looked sequential to the
// kernel: it filled large folios around it (holes zeroed) and marked them, so that the journal's
// own before-image reads read ahead again (10 % of the hub's CPU under 4 KiB sequential writes,
// Round 19).
// Real file on the build's own file system (tmpfs, a common /tmp, reads holes without readahead),
// real page cache; residency from cachestat (the native addon; Linux 6.5 or later).
import { strict as assert } from 'node:assert';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { AlarmReader } from '../src/hub/alarm-reader';
import { cachedPages } from '../storage/fileio';

const PAGE = 4096;
const PAGES = 16384; // 64 MiB

describe('AlarmReader', () => {
  let dir: string;
  before(() => (dir = fs.mkdtempSync(path.join(__dirname, 'tmp-alarm-reader-')))); // dist/test: on disk
  after(() => fs.rmSync(dir, { recursive: true, force: true }));

  it('reads only the pages asked for: no readahead around them, holes read as zeros', () => {
    const file = path.join(dir, 'V1R');
    const fd = fs.openSync(file, 'w+');
    try {
      fs.ftruncateSync(fd, PAGES * PAGE);
      let x = 12345; // xorshift32: the same pages every run
      const next = () => {
        x ^= x << 13;
        x ^= x >>> 17;
        x ^= x << 5;
        return (x >>> 0) % PAGES;
      };
      const written = new Set<number>();
      const page = Buffer.alloc(PAGE, 0x78);
      for (let i = 0; i < PAGES / 2; i++) {
        const p = next();
        written.add(p);
        fs.writeSync(fd, page, 0, PAGE, p * PAGE); // the guest's random writes, cached
      }
      const before = cachedPages(fd, 0, PAGES * PAGE);
      assert.notEqual(before, -1, 'page-cache residency unknown: this test needs cachestat (Linux 6.5 or later)');
      assert.equal(before, written.size, 'cachestat sees the written pages');

      const reader = new AlarmReader(file, PAGE);
      const read = new Set<number>();
      try {
        for (let i = 0; i < 2000; i++) {
          const p = next();
          if (written.has(p)) continue;
          read.add(p);
          const got = reader.read(p * PAGE, PAGE);
          assert.ok(got && got.length === PAGE && got.every((b) => b === 0), `page ${p} reads as a hole`);
        }
      } finally {
        reader.close();
      }
      assert.ok(read.size > 500);
      // without the advice: 1,518 pages brought in for 1,122 read (Linux 6.18)
      const added = cachedPages(fd, 0, PAGES * PAGE) - before;
      assert.ok(added <= read.size, `${added} pages brought in for ${read.size} read`);
    } finally {
      fs.closeSync(fd);
    }
  });
});
