// Initial sync of a sparse image with the real agent and hub processes on loopback: holes are
// not read (SEEK_DATA), zero chunks inside a read are not sent (IO_SPARSE), and the hub writes
// neither into the replica it created sparse. Exact byte counts, so a regression in any of the
// three shows.
import { strict as assert } from 'node:assert';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { randomBytes } from 'node:crypto';
import { tmpdir } from './harness/util';
import { HubProcess, v1Hub } from './harness/hub-process';
import { AgentProcess, v1Agent } from './harness/agent-process';
import { adviseRandom, dropCache, nativeUnavailable } from '../storage/fileio';

const KiB = 1024,
  MiB = 1 << 20,
  CHUNK = 64 * KiB;

describe('sparse initial sync (SEEK_DATA + IO_SPARSE)', function () {
  this.timeout(120_000);
  let dir: string, hub: HubProcess, agent: AgentProcess;
  afterEach(async () => {
    await agent?.stop();
    await hub?.stop();
    fs.rmSync(dir, { recursive: true, force: true });
  });

  /** A sparse image; returns the bytes of the 64 KiB chunks that hold data. */
  function makeSparseImage(img: string, size: number): number {
    const fd = fs.openSync(img, 'w');
    fs.ftruncateSync(fd, size);
    let dataChunks = 0;
    for (let i = 0; i < size / CHUNK; i++) {
      // 0: data, 1: hole, 2: written zeroes, 3: 4 KiB of data then zeroes, 4: 4 KiB of data in a hole
      const kind = i % 5;
      if (kind === 0) fs.writeSync(fd, randomBytes(CHUNK), 0, CHUNK, i * CHUNK);
      if (kind === 2) fs.writeSync(fd, Buffer.alloc(CHUNK), 0, CHUNK, i * CHUNK);
      if (kind === 3)
        fs.writeSync(fd, Buffer.concat([randomBytes(4 * KiB), Buffer.alloc(CHUNK - 4 * KiB)]), 0, CHUNK, i * CHUNK);
      if (kind === 4) fs.writeSync(fd, randomBytes(4 * KiB), 0, 4 * KiB, i * CHUNK + 32 * KiB);
      if (kind !== 1 && kind !== 2) dataChunks++;
    }
    fs.closeSync(fd);
    return dataChunks * CHUNK;
  }

  async function syncOnce(agentArgs: string[]): Promise<{ st: any; data: number; size: number; rep: string }> {
    dir = tmpdir();
    const img = path.join(dir, 'V1.img'),
      rep = path.join(dir, 'V1R');
    const size = 64 * MiB; // more reads than pooled buffers: reuse shows stale bytes
    const data = makeSparseImage(img, size);
    hub = v1Hub(dir, rep);
    await hub.start();
    agent = v1Agent(dir, img, hub.port, ...agentArgs);
    await agent.start();
    await hub.converged('V1', img, rep, 60_000);
    return { st: await agent.status(), data, size, rep };
  }

  it('only non-zero 64 KiB chunks cross the link; written zeroes cost a map bit, whole-region holes go in the report; replica byte-equal and sparse', async () => {
    assert.equal(nativeUnavailable(), '', 'the native addon is built (npm install)');
    const { st, data, size, rep } = await syncOnce([]);
    assert.equal(st.capsMask & 0x80, 0x80, 'SPARSE negotiated');
    assert.equal(st.capsMask & 0x40, 0x40, 'FRAME_CRC on a plaintext link');
    assert.equal(st.remoteReadBytes, data, 'only chunks holding data crossed the link');
    // kind 1 chunks are whole regions in holes: reported DIRTY_ZERO (cap HOLES), never read
    const holes = Math.ceil(size / CHUNK / 5) * CHUNK;
    assert.equal(st.remoteZeroBytes, size - data - holes, 'the rest of the zero chunks answered by a map bit');
    // holes are about 39 % of the image (kinds 1 and 4); allocated chunks, written zeroes included, are read
    assert.ok(
      st.remoteDiskBytes < 0.65 * size,
      `holes were not read: ${st.remoteDiskBytes} of ${size} bytes read from the image`,
    );
    const allocated = fs.statSync(rep).blocks * 512;
    // (file-system metadata such as an extent block may add a few KiB)
    assert.ok(allocated <= data + CHUNK, `replica allocates ${allocated} bytes for ${data} of data`);
  });

  it('a cold image is read around the page cache (O_DIRECT), the part in the cache through it; replica byte-equal', async () => {
    assert.equal(nativeUnavailable(), '', 'the native addon is built (npm install)');
    dir = tmpdir();
    const img = path.join(dir, 'V1.img'),
      rep = path.join(dir, 'V1R'),
      size = 32 * MiB;
    fs.writeFileSync(img, randomBytes(size));
    const fd = fs.openSync(img, 'r');
    fs.fdatasyncSync(fd);
    dropCache(fd, 0, 0); // on disk, not in the cache: as an image the VM wrote long ago
    // its first 8 MiB read lately (advised RANDOM: exactly those pages, no readahead marks that
    // would make the agent's own reads of them read ahead into the cold part)
    adviseRandom(fd);
    fs.readSync(fd, Buffer.alloc(8 * MiB), 0, 8 * MiB, 0);
    fs.closeSync(fd);
    hub = v1Hub(dir, rep);
    await hub.start();
    agent = v1Agent(dir, img, hub.port);
    await agent.start();
    await hub.converged('V1', img, rep, 60_000);
    const st = await agent.status();
    const direct = st.volumes[0].directReadBytes;
    assert.equal(st.remoteReadBytes, size, 'the whole image crossed the link');
    assert.equal(direct, size - 8 * MiB, 'the cold 24 MiB read direct, the cached 8 MiB through the cache');
  });

  /** A 1 GiB thin image: 3 MiB of data 768.5 MiB in, 64 KiB in the last region, holes elsewhere. */
  async function thinSync(agentArgs: string[]): Promise<{ st: any; rep: string }> {
    dir = tmpdir();
    const img = path.join(dir, 'V1.img'),
      rep = path.join(dir, 'V1R'),
      size = 1024 * MiB;
    const fd = fs.openSync(img, 'w');
    fs.ftruncateSync(fd, size);
    fs.writeSync(fd, randomBytes(3 * MiB), 0, 3 * MiB, 768 * MiB + 512 * KiB);
    fs.writeSync(fd, randomBytes(CHUNK), 0, CHUNK, size - CHUNK);
    fs.closeSync(fd);
    hub = v1Hub(dir, rep);
    await hub.start();
    agent = v1Agent(dir, img, hub.port, ...agentArgs);
    await agent.start();
    await hub.converged('V1', img, rep, 60_000); // byte-equal
    return { st: await agent.status(), rep };
  }

  it("a thin volume's holes go in the dirty report (HOLES): the hub zeroes them and reads only the data", async () => {
    assert.equal(nativeUnavailable(), '', 'the native addon is built (npm install)');
    const { st, rep } = await thinSync([]);
    assert.equal(st.capsMask & 0x2000, 0x2000, 'HOLES negotiated');
    assert.equal(st.remoteReadBytes, 3 * MiB + CHUNK, 'only the data crossed the link');
    // the data's 50 regions in runs of at most 1 MiB, and the last region; 1024 reads before
    assert.ok(st.remoteReads <= 8, `${st.remoteReads} remote reads`);
    const allocated = fs.statSync(rep).blocks * 512;
    assert.ok(allocated <= 4 * MiB + CHUNK, `replica allocates ${allocated} bytes: the holes stay holes`);
  });

  it("without SEEK_DATA a thin volume's holes are read in growing reads; data after a long hole lands whole", async () => {
    const { st } = await thinSync(['--no-seek-data']);
    assert.equal(st.remoteReadBytes, 3 * MiB + CHUNK, 'only the data crossed the link');
    // 1024 reads of the base 1 MiB before; growing to 8 MiB, about an eighth
    assert.ok(st.remoteReads < 192, `${st.remoteReads} remote reads for 1 GiB of holes`);
  });

  it('--no-seek-data reads the holes too and still sends only the chunks holding data', async () => {
    const { st, data, size } = await syncOnce(['--no-seek-data']);
    assert.equal(st.remoteDiskBytes, size, 'every byte read from the image');
    assert.equal(st.remoteReadBytes, data);
    assert.equal(st.remoteZeroBytes, size - data);
  });
});
