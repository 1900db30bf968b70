// Identities end to end (issue 13, scenarios 3-6): real hub and agent processes, real files, qemu-io
// writing through the agent's NBD export. Each scenario changes what one side holds behind the
// other's back (the image swapped or truncated while the agent is stopped, a second agent with the
// same --vm, the hub's --vol pointed at a new path, two recovery files swapped, a recovery file
// altered while the hub is down) and must end byte-equal, never showing `protecting` with 0 B dirty
// while the two copies differ.
import { strict as assert } from 'node:assert';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { sha, waitFor, tmpdir, makeImage, sleep } from './harness/util';
import { HubProcess } from './harness/hub-process';
import { AgentProcess, v1Agent } from './harness/agent-process';

const MiB = 1 << 20;
const SIZE = 32 * MiB;
const qio = (uri: string, ...cmds: string[]) =>
  execFileSync('qemu-io', ['-f', 'raw', ...cmds.flatMap((c) => ['-c', c]), uri], { timeout: 60_000 }).toString();

/**
 * Wait until `name` is protecting with 0 B dirty; at that first sight the replica must already equal
 * the image (a short grace for the last applied write to be readable): `protecting 0B` over a
 * difference is exactly the bug.
 */
async function honestlyConverged(hub: HubProcess, name: string, img: string, rep: string): Promise<void> {
  await waitFor(
    `${name} protecting and clean`,
    async () => {
      const v = await hub.volume(name);
      return v?.state === 'protecting' && v.dirtyBytes === 0;
    },
    90_000,
    20,
  );
  try {
    await waitFor(`${name} byte-equal at protecting 0B`, () => sha(img) === sha(rep), 2000, 50);
  } catch {
    assert.fail(`${name} shows protecting with 0 B dirty while ${rep} differs from ${img}`);
  }
}

function hubWith(dir: string, vols: string[], logFile: string): HubProcess {
  return new HubProcess([...vols.flatMap((v) => ['--vol', v]), '--data', path.join(dir, 'hub')], { logFile });
}

function logOf(file: string): string {
  return fs.existsSync(file) ? fs.readFileSync(file, 'utf8') : '';
}

describe('identities: no silent divergence (issue 13, scenarios 3-6)', function () {
  this.timeout(300_000);
  let dir: string, img: string, rep: string, hubLog: string;
  let hub: HubProcess, agent: AgentProcess;
  const extra: AgentProcess[] = [];

  beforeEach(async () => {
    dir = tmpdir();
    img = path.join(dir, 'V1.img');
    rep = path.join(dir, 'V1R');
    hubLog = path.join(dir, 'hub.log');
    makeImage(img, SIZE, 0.5);
    hub = hubWith(dir, [`V1=${rep}`], hubLog);
    await hub.start();
    agent = v1Agent(dir, img, hub.port);
    await agent.start();
    await honestlyConverged(hub, 'V1', img, rep);
  });
  afterEach(async () => {
    for (const a of [agent, ...extra.splice(0)]) await a.stop().catch(() => undefined);
    await hub.stop().catch(() => undefined);
    fs.rmSync(dir, { recursive: true, force: true });
  });

  it('image swapped for another image while the agent is stopped: detected, resynced, byte-equal', async () => {
    await agent.stop();
    const other = path.join(dir, 'other.img');
    makeImage(other, SIZE, 0.7);
    fs.renameSync(other, img); // another inode at the same path
    await agent.start();
    await honestlyConverged(hub, 'V1', img, rep);
    assert.match(agent.stderr, /not the one this dirty log knew/);
    assert.match(logOf(hubLog), /protected volume identity changed/);
    qio(agent.uri('V1'), 'write -P 0x3c 5M 1M'); // protection goes on afterwards
    await honestlyConverged(hub, 'V1', img, rep);
  });

  it('image truncated to 0 and re-extended while the agent is stopped: detected, resynced, byte-equal', async () => {
    await agent.stop();
    fs.truncateSync(img, 0);
    fs.truncateSync(img, SIZE);
    const fd = fs.openSync(img, 'r+');
    fs.writeSync(fd, randomBytes(MiB), 0, MiB, 3 * MiB);
    fs.closeSync(fd);
    await agent.start();
    await honestlyConverged(hub, 'V1', img, rep);
    assert.match(agent.stderr, /changed while nothing watched it/);
    assert.match(logOf(hubLog), /protected volume identity changed/);
  });

  /** A clone of the agent's host: its image and state copied while the agent was stopped. */
  async function cloneHost(): Promise<{ clone: AgentProcess; cloneImg: string }> {
    await agent.stop();
    const cdir = path.join(dir, 'clone');
    fs.mkdirSync(cdir);
    const cloneImg = path.join(cdir, 'V1.img');
    fs.copyFileSync(img, cloneImg);
    fs.cpSync(path.join(dir, 'agent'), path.join(cdir, 'agent'), { recursive: true });
    const clone = v1Agent(cdir, cloneImg, hub.port); // the same --vm vm1
    extra.push(clone);
    await agent.start();
    await honestlyConverged(hub, 'V1', img, rep);
    return { clone, cloneImg };
  }

  it('two live agents with the same --vm: the second is refused, the first keeps protecting, no takeover churn', async () => {
    const { clone, cloneImg } = await cloneHost();
    const before = logOf(hubLog).length;
    await clone.start();
    qio(clone.uri('V1'), 'write -P 0x99 1M 1M'); // the clone's own guest writes
    await waitFor('the clone refused', () => /held by another live agent/.test(clone.stderr), 15_000, 50);
    for (let i = 0; i < 4; i++) {
      qio(agent.uri('V1'), `write -P 0x${(0x41 + i).toString(16)} ${8 + i}M 512k`);
      await sleep(1000);
    }
    await honestlyConverged(hub, 'V1', img, rep); // the first agent's writes keep converging
    const st = await clone.status();
    assert.equal(st.volumes[0].volumeId, -1, 'the clone never got the volume');
    const log = logOf(hubLog).slice(before);
    assert.equal((log.match(/replacing it/g) ?? []).length, 0, 'no takeover');
    const refusals = (log.match(/held by another live agent/g) ?? []).length;
    assert.ok(
      refusals >= 1 && refusals <= 6,
      `the clone retries with backoff, not in a loop: ${refusals} refusals in ~5 s`,
    );
    const errors = clone.stderr.split('\n').filter((l) => l.includes('"level":50') && l.includes('held by another'));
    assert.equal(errors.length, 1, 'the clone logs the refusal once as an error');
    assert.notEqual(sha(cloneImg), sha(rep));
  });

  it('two agents with the same --vm in turn: the second converges byte-equal to its own image', async () => {
    const { clone, cloneImg } = await cloneHost();
    qio(agent.uri('V1'), 'write -P 0x5e 2M 4M'); // the original moves on after the clone was taken
    await honestlyConverged(hub, 'V1', img, rep);
    await agent.stop();
    await clone.start();
    qio(clone.uri('V1'), 'write -P 0x6f 20M 1M');
    await honestlyConverged(hub, 'V1', cloneImg, rep);
    execFileSync('cmp', [cloneImg, rep]);
    assert.match(logOf(hubLog), /protected volume identity changed/);
  });

  it('hub --vol pointed at a new empty path: detected, resynced, byte-equal', async () => {
    await agent.stop();
    await hub.stop();
    const moved = path.join(dir, 'V1R-new');
    const old = hub;
    hub = hubWith(dir, [`V1=${moved}`], hubLog);
    [hub.port, hub.httpPort, hub.nbdPort] = [old.port, old.httpPort, old.nbdPort]; // where the agent dials
    await hub.start();
    await agent.start();
    await honestlyConverged(hub, 'V1', img, moved);
    execFileSync('cmp', [img, moved]);
    assert.match(logOf(hubLog), /does not exist, but the record says/);
  });

  it('recovery file altered (256 KiB random) while the hub is down: detected at restart, resynced, byte-equal', async () => {
    await agent.stop();
    await hub.stop();
    const fd = fs.openSync(rep, 'r+');
    fs.writeSync(fd, randomBytes(256 * 1024), 0, 256 * 1024, 7 * MiB);
    fs.closeSync(fd);
    await hub.start();
    await agent.start();
    await honestlyConverged(hub, 'V1', img, rep);
    execFileSync('cmp', [img, rep]);
    assert.match(logOf(hubLog), /changed while nothing watched it/);
  });
});

describe('identities: two recovery files swapped (issue 13, scenario 5)', function () {
  this.timeout(300_000);
  it('both volumes detected, resynced, byte-equal', async () => {
    const dir = tmpdir();
    const hubLog = path.join(dir, 'hub.log');
    const [img1, img2, rep1, rep2] = ['V1.img', 'V2.img', 'V1R', 'V2R'].map((f) => path.join(dir, f));
    makeImage(img1, SIZE, 0.5);
    makeImage(img2, SIZE, 0.6);
    const hub = hubWith(dir, [`V1=${rep1}`, `V2=${rep2}`], hubLog);
    const state = ['--state', path.join(dir, 'agent'), '--vm', 'vm1'];
    const agent = new AgentProcess(['--export', `V1=${img1}`, '--export', `V2=${img2}`, ...state]);
    try {
      await hub.start();
      agent.args.unshift('--hub', `127.0.0.1:${hub.port}`);
      await agent.start();
      await honestlyConverged(hub, 'V1', img1, rep1);
      await honestlyConverged(hub, 'V2', img2, rep2);
      await agent.stop();
      await hub.stop();
      const tmp = path.join(dir, 'swap');
      fs.renameSync(rep1, tmp);
      fs.renameSync(rep2, rep1);
      fs.renameSync(tmp, rep2);
      await hub.start();
      await agent.start();
      await honestlyConverged(hub, 'V1', img1, rep1);
      await honestlyConverged(hub, 'V2', img2, rep2);
      execFileSync('cmp', [img1, rep1]);
      execFileSync('cmp', [img2, rep2]);
      const found = logOf(hubLog)
        .split('\n')
        .filter((l) => l.includes('"level":50') && /is not the one the record knew: a different file/.test(l));
      assert.deepEqual(found.map((l) => JSON.parse(l).volume).sort(), ['V1', 'V2'], 'each logged once, as an error');
    } finally {
      await agent.stop().catch(() => undefined);
      await hub.stop().catch(() => undefined);
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });
});
