// ForwardReadAhead: reads that walk forward get the window ahead of them read into the page cache
// in the background, sized by the reads; scattered reads get nothing. A real file on the
// build's file system, its pages dropped first; residency from cachestat (the native addon).
import { strict as assert } from 'node:assert';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { ForwardReadAhead } from '../storage/forward-read-ahead';
import { cachedPages, dropCache } from '../storage/fileio';
import { waitFor } from './harness/util';

const PAGE = 4096;
const SIZE = 16 << 20;
const WINDOW = 1 << 20; // for 4 KiB reads

describe('ForwardReadAhead', () => {
  let dir: string, file: string, fd: number;
  before(() => {
    dir = fs.mkdtempSync(path.join(__dirname, 'tmp-read-ahead-')); // dist/test: on disk, not tmpfs
    file = path.join(dir, 'V1R');
    fs.writeFileSync(file, Buffer.alloc(SIZE, 0x42));
  });
  after(() => fs.rmSync(dir, { recursive: true, force: true }));
  beforeEach(() => {
    fd = fs.openSync(file, 'r');
    fs.fdatasyncSync(fd);
    fs.readSync(fd, Buffer.alloc(PAGE), 0, PAGE, 0);
    assert.ok(cachedPages(fd, 0, PAGE) === 1, 'cachestat sees a page read (Linux 6.5 or later, not overlayfs)');
    dropCache(fd, 0, 0);
    assert.equal(cachedPages(fd, 0, SIZE), 0, 'cold');
  });
  afterEach(() => fs.closeSync(fd));

  it('small reads in a row: the window after them is read in, and refilled as they go on', async () => {
    const ahead = new ForwardReadAhead(
      () => fd,
      () => SIZE,
    );
    let at = 4 << 20;
    for (let i = 0; i < 3; i++, at += PAGE) ahead.reading(at, at + PAGE);
    await waitFor('the window read in', () => cachedPages(fd, at, WINDOW) === WINDOW / PAGE, 5000, 5);
    assert.equal(cachedPages(fd, 0, 4 << 20), 0, 'nothing behind the run');
    for (; at < (4 << 20) + WINDOW; at += PAGE) ahead.reading(at, at + PAGE); // past half of it
    await waitFor('refilled', () => cachedPages(fd, at, WINDOW / 2) === WINDOW / 2 / PAGE, 5000, 5);
  });

  it('scattered reads ask for nothing', () => {
    const ahead = new ForwardReadAhead(
      () => fd,
      () => SIZE,
    );
    for (const p of [100, 7, 900, 9, 3000, 11, 2000]) ahead.reading(p * PAGE, (p + 1) * PAGE);
    assert.equal(cachedPages(fd, 0, SIZE), 0);
  });

  it('large reads in a row: a window of 8 of them, at most 8 MiB', async () => {
    const ahead = new ForwardReadAhead(
      () => fd,
      () => SIZE,
    );
    const MIB = 1 << 20;
    for (let at = 0; at < 3 * MIB; at += MIB) ahead.reading(at, at + MIB);
    await waitFor('8 MiB ahead read in', () => cachedPages(fd, 3 * MIB, 8 * MIB) === (8 * MIB) / PAGE, 5000, 5);
    assert.equal(cachedPages(fd, 11 * MIB, SIZE - 11 * MIB), 0, 'not past the window');
  });

  it('clips the window at the end of the volume', async () => {
    const ahead = new ForwardReadAhead(
      () => fd,
      () => SIZE,
    );
    for (let at = SIZE - 4 * PAGE; at < SIZE; at += PAGE) ahead.reading(at, at + PAGE);
    await waitFor('the last page read in', () => cachedPages(fd, SIZE - PAGE, PAGE) === 1, 5000, 5);
    assert.equal(cachedPages(fd, 0, SIZE - 4 * PAGE), 0, 'nothing else');
  });

  it('follows the end of a volume grown online', async () => {
    let size = SIZE / 2;
    const ahead = new ForwardReadAhead(
      () => fd,
      () => size,
    );
    let at = size - 4 * PAGE;
    for (; at < size; at += PAGE) ahead.reading(at, at + PAGE);
    await waitFor('up to the old end', () => cachedPages(fd, size - PAGE, PAGE) === 1, 5000, 5);
    assert.equal(cachedPages(fd, size, SIZE - size), 0, 'nothing past the old end');
    size = SIZE; // resized: the run goes on past the old end
    ahead.reading(at, at + PAGE);
    const past = at + PAGE;
    await waitFor('the window past the old end', () => cachedPages(fd, past, WINDOW) === WINDOW / PAGE, 5000, 5);
  });

  it('two forward runs read in turns: each gets its window', async () => {
    const ahead = new ForwardReadAhead(
      () => fd,
      () => SIZE,
    );
    let a = 0,
      b = SIZE / 2;
    for (let i = 0; i < 3; i++, a += PAGE, b += PAGE) {
      ahead.reading(a, a + PAGE);
      ahead.reading(b, b + PAGE);
    }
    await waitFor(
      'both windows read in',
      () => cachedPages(fd, a, WINDOW) + cachedPages(fd, b, WINDOW) === (2 * WINDOW) / PAGE,
      5000,
      5,
    );
  });
});
