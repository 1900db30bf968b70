// Checksum resync end to end: real hub and agent processes, real files, fio through the agent's
// NBD export. The recovery file is a copy of the protected image with scattered differences
// (4 KiB blocks and 64 KiB ranges, some with data only on the recovery side), and the hub has
// no state for it: a seeded replica. The hub must compare by checksum and move only what
// differs (bytes on the link, counted by a TCP proxy, at most 1.1 x the differing bytes plus
// 1 % of the volume), under live writes too, and resume by checksum after a kill -9.
import { strict as assert } from 'node:assert';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { randomBytes } from 'node:crypto';
import { spawnSync } from 'node:child_process';
import { tmpdir, makeImage, waitFor, MiB, readRegion } from './harness/util';
import { fioWriter, killWriters } from './harness/fio';
import { HubProcess, v1Hub } from './harness/hub-process';
import { AgentProcess, v1Agent } from './harness/agent-process';
import { FaultProxy } from './harness/fault-proxy';
import { mulberry32 } from './harness/prng';

const KiB = 1024;
const BLOCK = 4 * KiB;

/** cmp exit status: 0 equal, 1 different. */
function cmp(a: string, b: string): number {
  return spawnSync('cmp', ['-s', a, b]).status ?? -1;
}

/** Bytes of 4 KiB blocks that differ between the two files. */
function differingBytes(a: string, b: string): number {
  const size = fs.statSync(a).size;
  let n = 0;
  for (let off = 0; off < size; off += MiB) {
    const x = readRegion(a, off, MiB),
      y = readRegion(b, off, MiB);
    for (let o = 0; o < MiB; o += BLOCK) {
      if (x.compare(y, o, o + BLOCK, o, o + BLOCK) !== 0) n += BLOCK;
    }
  }
  return n;
}

function write(file: string, off: number, data: Buffer): void {
  const fd = fs.openSync(file, 'r+');
  fs.writeSync(fd, data, 0, data.length, off);
  fs.closeSync(fd);
}

/**
 * The protected image and a seeded copy of it that differs in scattered 4 KiB blocks (either
 * side changed), three 64 KiB ranges (one across a region boundary), and two 64 KiB ranges
 * where only the recovery side holds data (the protected side is a hole there).
 */
function seededPair(dir: string, size: number, seed: number): { img: string; rep: string } {
  const img = path.join(dir, 'V1.img'),
    rep = path.join(dir, 'V1R');
  makeImage(img, size, 0.5);
  fs.copyFileSync(img, rep);
  const rand = mulberry32(seed);
  const blocks = size / BLOCK;
  for (let i = 0; i < 48; i++) {
    const off = Math.floor(rand() * blocks) * BLOCK;
    write(i % 2 === 0 ? img : rep, off, randomBytes(BLOCK));
  }
  for (const off of [3 * MiB, 17 * MiB + 32 * KiB, 40 * MiB + 4 * KiB]) write(img, off, randomBytes(64 * KiB));
  let holes = 0;
  for (let off = 8 * MiB; off < size && holes < 2; off += 64 * KiB) {
    if (readRegion(img, off, 64 * KiB).some((b) => b !== 0)) continue;
    write(rep, off, randomBytes(64 * KiB)); // data the protected side does not have
    holes++;
  }
  assert.equal(holes, 2, 'the image has holes to differ in');
  return { img, rep };
}

function fio(uri: string, seconds: number) {
  return fioWriter(uri, seconds, ['--bsrange=4k-64k', '--offset=32m', '--size=32m']);
}

describe('checksum resync of a seeded replica (real hub and agent)', function () {
  this.timeout(300_000);
  const size = 128 * MiB;
  let dir: string, hub: HubProcess, agent: AgentProcess | undefined, proxy: FaultProxy;
  let img: string, rep: string;

  beforeEach(async () => {
    dir = tmpdir();
    ({ img, rep } = seededPair(dir, size, 7));
    hub = v1Hub(dir, rep);
    await hub.start();
    proxy = new FaultProxy({ target: { host: '127.0.0.1', port: hub.port } });
    await proxy.listen();
  });
  afterEach(async () => {
    killWriters();
    await agent?.stop();
    agent = undefined;
    await hub.stop();
    await proxy.close();
    fs.rmSync(dir, { recursive: true, force: true });
  });

  const linkBytes = () => proxy.stats.bytesUp + proxy.stats.bytesDown;

  it('moves only what differs: link bytes <= 1.1 x differing + 1 % of the volume; cmp equal', async () => {
    const differing = differingBytes(img, rep);
    agent = v1Agent(dir, img, proxy.port);
    await agent.start();
    await hub.converged('V1', img, rep, 120_000);
    assert.equal(cmp(img, rep), 0, 'byte-equal');
    const v = await hub.volume('V1');
    const onLink = linkBytes();
    console.log(
      `      differing ${differing} B, on the link ${onLink} B, moved ${v.checksumResync?.movedBytes} B, compared ${v.checksumResync?.comparedBytes} B`,
    );
    assert.ok(onLink <= 1.1 * differing + size / 100, `${onLink} bytes on the link for ${differing} differing`);
    assert.ok(v.checksumResync.finishedAt, 'the checksum resync finished');
    assert.match(v.checksumResync.reason, /seeded/);
    assert.equal(v.syncMode, 'copy', 'back to normal once clean');
    assert.ok(onLink <= 1.1 * differing + size / 100, `${onLink} bytes on the link for ${differing} differing`);
    assert.ok(v.syncBytes <= 1.1 * differing, `sync wrote ${v.syncBytes} bytes for ${differing} differing`);
    assert.ok(v.checksumResync.matchedBytes > size / 2, 'most of the volume matched with no data moved');
    const metrics = await (await fetch(`http://${hub.http}/metrics`)).text();
    assert.match(metrics, /rephub_volume_checksum_compared_bytes_total\{volume="V1",vm="vm1"\} \d+/);
    assert.match(metrics, /rephub_volume_checksum_moved_bytes_total\{volume="V1",vm="vm1"\} \d+/);
  });

  it('writes keep flowing through the agent during the resync and still converge byte-equal', async () => {
    proxy.setMode({ kind: 'delay', ms: 20 }); // a slower link: the resync and the writer overlap
    agent = v1Agent(dir, img, proxy.port);
    await agent.start();
    const writer = fio(agent.uri('V1'), 6);
    await waitFor('the volume syncs by checksum', async () => (await hub.volume('V1'))?.syncMode === 'checksum');
    assert.equal(await writer, 0, 'fio succeeded');
    proxy.setMode({ kind: 'pass' });
    await hub.converged('V1', img, rep, 120_000);
    assert.equal(cmp(img, rep), 0, 'byte-equal after writes during the resync');
    assert.ok((await hub.volume('V1')).checksumResync.finishedAt);
  });

  it('a hub killed mid-resync resumes by checksum after restart', async () => {
    const differing = differingBytes(img, rep);
    proxy.setMode({ kind: 'delay', ms: 30 });
    agent = v1Agent(dir, img, proxy.port);
    await agent.start();
    await waitFor('compares under way', async () => {
      const v = await hub.volume('V1');
      return v?.syncMode === 'checksum' && v.checksumResync.comparedBytes > 0 && v.dirtyBytes > size / 4;
    });
    await hub.kill9();
    await hub.start(); // same ports: the agent reconnects through the proxy
    const v0 = await hub.volume('V1');
    assert.equal(v0.syncMode, 'checksum', 'the flag survived the crash');
    assert.ok(v0.dirtyBytes > 0);
    proxy.setMode({ kind: 'pass' });
    await hub.converged('V1', img, rep, 120_000);
    assert.equal(cmp(img, rep), 0, 'byte-equal');
    const v = await hub.volume('V1');
    assert.ok(v.checksumResync.finishedAt);
    const onLink = linkBytes();
    console.log(`      differing ${differing} B, on the link over both hub runs ${onLink} B`);
    assert.ok(onLink <= 1.1 * differing + size / 100, `${onLink} bytes on the link: no blind copy after the restart`);
  });

  it('a recovery file the hub creates itself gets the normal initial sync, not a checksum resync', async () => {
    await hub.stop();
    const fresh = path.join(dir, 'V1R-new');
    hub = v1Hub(dir, fresh, '--data', path.join(dir, 'hub2'));
    await hub.start();
    await proxy.close();
    proxy = new FaultProxy({ target: { host: '127.0.0.1', port: hub.port } });
    await proxy.listen();
    agent = v1Agent(dir, img, proxy.port);
    await agent.start();
    await hub.converged('V1', img, fresh, 120_000);
    const v = await hub.volume('V1');
    assert.equal(v.checksumResync, null, 'no checksum resync for a file the hub created');
    assert.equal(cmp(img, fresh), 0);
  });
});
