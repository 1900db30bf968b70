// RemoteIo.holesIn, the hole scan behind a report's DIRTY_ZERO frames (cap HOLES): whole regions
// only, the volume's partial last region, and a scan cut short by its time budget returns a
// subset of the holes (the rest go as plain dirty regions), never a region holding data.
import { strict as assert } from 'node:assert';
import { DirtyBitmap } from '../storage/bitmap';
import { RemoteIo } from '../src/agent/remote-io';
import { newStats } from '../src/agent/ports';
import { silentLogger } from '../src/log';
import type { AgentVolume } from '../src/agent/volume';

const KiB = 1024,
  MiB = 1 << 20,
  GiB = 1 << 30,
  RS = 64 * KiB;

/** A volume whose image holds data at `data` ([start, end) byte ranges), holes elsewhere. */
function volume(data: [number, number][]): AgentVolume {
  const dataExtents = (start: number, end: number) =>
    data
      .filter(([a, b]) => b > start && a < end)
      .map(([a, b]): [number, number] => [Math.max(a, start), Math.min(b, end)]);
  return { target: { dataExtents } } as unknown as AgentVolume;
}

function remoteIo(seekData = true): RemoteIo {
  return new RemoteIo(null as never, { maxRemoteIo: 1, seekData }, silentLogger(), newStats(), null as never);
}

describe('RemoteIo.holesIn (HOLES)', () => {
  const size = 4 * GiB + 100 * KiB; // a partial last region
  const data: [number, number][] = [
    [10 * MiB + 4 * KiB, 10 * MiB + 8 * KiB], // 4 KiB inside region 160
    [2 * GiB - 1, 2 * GiB + 1], // across a scan window's edge
    [4 * GiB + 70 * KiB, 4 * GiB + 71 * KiB], // in the partial last region
  ];
  const dirty = () => {
    const d = new DirtyBitmap(size, RS);
    d.setAll();
    return d;
  };
  const holding = (r: number) => data.some(([a, b]) => a < (r + 1) * RS && b > r * RS);

  it('reports every whole region without data, and none with data', () => {
    const holes = remoteIo().holesIn(volume(data), dirty())!;
    for (let r = 0; r < holes.regions; r++) assert.equal(holes.get(r), !holding(r), `region ${r}`);
  });

  it('a scan past its time budget returns only holes, and fewer of them', () => {
    let t = 0;
    const holes = remoteIo().holesIn(volume(data), dirty(), () => (t += 7))!; // 20 ms gone by the third look
    let n = 0;
    for (let r = 0; r < holes.regions; r++) {
      if (holes.get(r)) n++;
      assert.ok(!(holes.get(r) && holding(r)), `region ${r} holds data`);
    }
    assert.ok(n > 0 && n < holes.regions - 4, `${n} hole regions found before the budget ran out`);
  });

  it('finds nothing with SEEK_DATA turned off', () => {
    assert.equal(remoteIo(false).holesIn(volume(data), dirty()), null);
  });
});
