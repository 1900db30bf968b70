// Initial sync of a sparse image with the real agent and hub processes on loopback: holes are
// not read (SEEK_DATA), zero chunks inside a read are not sent (IO_SPARSE), and the hub writes
// neither into the replica it created sparse. Exact byte counts, so a regression in any of the
// three shows.
import { strict as assert } from 'node:assert';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { randomBytes } from 'node:crypto';
import { tmpdir } from './helpers/util';
import { HubProcess, AgentProcess } from './helpers/hub-process';
import { fadviseUnavailable } from '../storage/fileio';

const KiB = 1024, MiB = 1 << 20, CHUNK = 64 * KiB;

describe('sparse initial sync (SEEK_DATA + IO_SPARSE)', function () {
  this.timeout(120_000);
  let dir: string, hub: HubProcess, agent: AgentProcess;
  afterEach(async () => {
    await agent?.stop();
    await hub?.stop();
    fs.rmSync(dir, { recursive: true, force: true });
  });

  it('only non-zero 64 KiB chunks cross the link; holes and written zeroes cost a map bit; replica byte-equal and sparse', async () => {
    assert.equal(fadviseUnavailable(), '', 'the native addon is built (npm install)');
    dir = tmpdir();
    const img = path.join(dir, 'V1.img'), rep = path.join(dir, 'V1R');
    const size = 64 * MiB, fd = fs.openSync(img, 'w'); // more reads than pooled buffers: reuse shows stale bytes
    fs.ftruncateSync(fd, size);
    let dataChunks = 0;
    for (let i = 0; i < size / CHUNK; i++) {
      const kind = i % 5; // 0: data, 1: hole, 2: written zeroes, 3: 4 KiB of data then zeroes, 4: 4 KiB of data in a hole
      if (kind === 0) fs.writeSync(fd, randomBytes(CHUNK), 0, CHUNK, i * CHUNK);
      if (kind === 2) fs.writeSync(fd, Buffer.alloc(CHUNK), 0, CHUNK, i * CHUNK);
      if (kind === 3) fs.writeSync(fd, Buffer.concat([randomBytes(4 * KiB), Buffer.alloc(CHUNK - 4 * KiB)]), 0, CHUNK, i * CHUNK);
      if (kind === 4) fs.writeSync(fd, randomBytes(4 * KiB), 0, 4 * KiB, i * CHUNK + 32 * KiB);
      if (kind === 0 || kind === 3 || kind === 4) dataChunks++;
    }
    fs.closeSync(fd);
    hub = new HubProcess(['--vol', `V1=${rep}`, '--data', path.join(dir, 'hub')]);
    await hub.start();
    agent = new AgentProcess(['--hub', `127.0.0.1:${hub.port}`, '--export', `V1=${img}`, '--state', path.join(dir, 'agent'), '--vm', 'vm1']);
    await agent.start();
    await hub.converged('V1', img, rep, 60_000);
    const st = await agent.status();
    assert.equal(st.caps & 0x80, 0x80, 'SPARSE negotiated');
    assert.equal(st.caps & 0x40, 0x40, 'FRAME_CRC on a plaintext link');
    assert.equal(st.remoteReadBytes, dataChunks * CHUNK, 'only chunks holding data crossed the link');
    assert.equal(st.remoteZeroBytes, size - dataChunks * CHUNK);
    const allocated = fs.statSync(rep).blocks * 512;
    // (file-system metadata such as an extent block may add a few KiB)
    assert.ok(allocated <= dataChunks * CHUNK + CHUNK, `replica allocates ${allocated} bytes for ${dataChunks * CHUNK} of data`);
  });
});
