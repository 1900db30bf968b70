// Power-loss ordering on the real agent process: strace records its pwrite and fdatasync calls
// while qemu-io writes through its NBD export into extents the activity log has not made hot.
// Before each such image write, the dirty-log file must have been fdatasync'ed with nothing
// written to it since: the mark is durable before the write can reach the image. (The base
// commit wrote the mark to the page cache only: this fails there.) Then the replica converges.
import { strict as assert } from 'node:assert';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { execFileSync, spawn } from 'node:child_process';
import { tmpdir, makeImage, waitFor, sleep } from './harness/util';
import { HubProcess, v1Hub } from './harness/hub-process';
import { AgentProcess, v1Agent } from './harness/agent-process';

const MiB = 1 << 20;
const EXTENT = 4 * MiB; // the activity log's default extent

describe('power-loss ordering on the real agent (strace)', function () {
  this.timeout(300_000);
  let dir: string, hub: HubProcess, agent: AgentProcess, img: string, rep: string;

  beforeEach(async () => {
    dir = tmpdir();
    img = path.join(dir, 'V1.img');
    rep = path.join(dir, 'V1R');
    makeImage(img, 32 * MiB, 0.3);
    hub = v1Hub(dir, rep);
    await hub.start();
    agent = v1Agent(dir, img, hub.port);
    await agent.start();
    await hub.converged('V1', img, rep, 120_000);
  });
  afterEach(async () => {
    await agent.stop();
    await hub.stop();
    fs.rmSync(dir, { recursive: true, force: true });
  });

  it('a write into a cold extent reaches the image only after its mark was fdatasynced', async () => {
    const trace = path.join(dir, 'agent.strace');
    const st = spawn(
      'strace',
      ['-f', '-qq', '-y', '-e', 'trace=pwrite64,pwritev,fdatasync', '-o', trace, '-p', `${agent.proc!.pid}`],
      {
        stdio: 'ignore',
      },
    );
    await waitFor('strace attached', () => fs.existsSync(trace), 10_000);
    await sleep(500);
    const cmds: string[] = [];
    for (let k = 0; k < 6; k++) cmds.push('-c', `write -P ${0x40 + k} ${k * EXTENT + 12288} 4k`);
    cmds.push('-c', `write -P 0x7e ${EXTENT + 65536} 4k`); // extent 1 again: hot, no log IO needed
    execFileSync('qemu-io', ['-f', 'raw', ...cmds, agent.uri('V1')], { timeout: 60_000, stdio: 'ignore' });
    await sleep(300);
    st.kill('SIGINT');
    await new Promise((r) => st.once('exit', r));

    const lines = fs.readFileSync(trace, 'utf8').split('\n');
    const isLog = (l: string) => /\.dirty>/.test(l);
    const isImage = (l: string) => /V1\.img>/.test(l);
    let logSynced = false, // the log's last call was an fdatasync
      syncedSinceImage = false; // and one came since the previous image write
    const firstWrites = new Map<number, boolean>(); // extent -> ordered
    for (const l of lines) {
      const m = /^\d+\s+(pwrite64|pwritev|fdatasync)\((\d+)</.exec(l);
      if (!m) continue;
      if (isLog(l)) {
        logSynced = m[1] === 'fdatasync';
        if (logSynced) syncedSinceImage = true;
      } else if (isImage(l) && m[1] !== 'fdatasync') {
        const off = Number(/, (\d+)\) = /.exec(l)?.[1] ?? -1);
        const e = Math.floor(off / EXTENT);
        if (!firstWrites.has(e)) firstWrites.set(e, logSynced && syncedSinceImage);
        syncedSinceImage = false;
      }
    }
    assert.equal(
      firstWrites.size,
      6,
      `image writes seen in 6 extents: ${[...firstWrites.keys()]}\n${lines.slice(0, 40).join('\n')}`,
    );
    for (const [e, ordered] of firstWrites)
      assert.ok(ordered, `extent ${e}: image written before its mark was durable`);
    await hub.converged('V1', img, rep, 120_000);
  });
});
