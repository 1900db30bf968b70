// One hub per state and per recovery volume, and an operator API no one else can drive, end to
// end with real hub and agent processes and real NBD clients: a second hub on the same --data or
// the same recovery file exits 3 naming the lock and its holder while the first keeps
// protecting; kill -9 leaves no stale lock; a POST without the admin token (401) or without a
// JSON content type (415) changes nothing, with both it runs; the CLI reads the token file.
import { strict as assert } from 'node:assert';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { execFileSync, spawn } from 'node:child_process';
import { tmpdir, makeImage } from './harness/util';
import { HubProcess, CLI, v1Hub } from './harness/hub-process';
import { AgentProcess, v1Agent } from './harness/agent-process';
import { freePort } from './harness/ports';

const MiB = 1 << 20;
const qio = (uri: string, cmd: string) =>
  execFileSync('qemu-io', ['-f', 'raw', '-c', cmd, uri], { timeout: 60_000, stdio: ['ignore', 'pipe', 'pipe'] });

/**
 * A process run to its exit without blocking the event loop (a blocked loop lets the server
 * close the test's idle keep-alive socket unseen); killed after `timeoutMs`.
 */
function runToExit(
  args: string[],
  timeoutMs: number,
  env: NodeJS.ProcessEnv = process.env,
): Promise<{ status: number | null; out: string; stderr: string }> {
  const p = spawn(process.execPath, args, { env, stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '',
    stderr = '';
  p.stdout.on('data', (d) => (out += d));
  p.stderr.on('data', (d) => (stderr += d));
  const timer = setTimeout(() => p.kill('SIGKILL'), timeoutMs);
  return new Promise((resolve) =>
    p.on('close', (status) => {
      clearTimeout(timer);
      resolve({ status, out: out + stderr, stderr });
    }),
  );
}

/** A hub run to its exit (a refused one exits at once; one that starts is killed after 10 s). */
async function runHub(...args: string[]): Promise<{ status: number | null; stderr: string }> {
  const addr: string[] = [];
  for (const p of ['--listen', '--http', '--nbd']) addr.push(p, `127.0.0.1:${await freePort()}`);
  return runToExit([CLI, ...addr, ...args], 10_000);
}

/** The CLI as an operator runs it. */
const cli = (...args: string[]) => runToExit([CLI, ...args], 30_000);

describe('hub lock on --data and recovery volumes, operator API token', function () {
  this.timeout(180_000);
  let dir: string, hub: HubProcess, agent: AgentProcess, img: string, rep: string;

  beforeEach(async () => {
    agent = undefined as unknown as AgentProcess;
    dir = tmpdir();
    img = path.join(dir, 'V1.img');
    rep = path.join(dir, 'V1R');
    makeImage(img, 16 * MiB, 0.5);
    hub = v1Hub(dir, rep);
    await hub.start();
    agent = v1Agent(dir, img, hub.port);
    await agent.start();
    await hub.converged('V1', img, rep);
  });
  afterEach(async () => {
    await agent?.stop();
    await hub?.stop();
    fs.rmSync(dir, { recursive: true, force: true });
  });

  it('a second hub on the same --data exits 3 naming the lock and the first hub; the first keeps protecting', async () => {
    const other = path.join(dir, 'other-R');
    const second = await runHub('--vol', `V1=${other}`, '--data', path.join(dir, 'hub'));
    assert.equal(second.status, 3, second.stderr);
    assert.match(second.stderr, new RegExp(`${path.join(dir, 'hub', 'rephub.lock')} is held`));
    assert.match(second.stderr, new RegExp(`\\(pid ${hub.pid}\\)`));
    assert.ok(!fs.existsSync(other), 'the refused hub created no recovery volume');
    qio(agent.uri('V1'), 'write -P 0x5c 1M 2M');
    await hub.converged('V1', img, rep);
    assert.equal(hub.exit, null, 'the first hub still runs');
  });

  it('a second hub on another --data but the same recovery file, or a symlink to it, exits 3', async () => {
    const link = path.join(dir, 'V1R-link');
    fs.symlinkSync(rep, link);
    for (const vol of [rep, link]) {
      const second = await runHub('--vol', `V1=${vol}`, '--data', path.join(dir, `hub2-${path.basename(vol)}`));
      assert.equal(second.status, 3, second.stderr);
      assert.match(second.stderr, new RegExp(`recovery volume ${vol} is in use .*\\(pid ${hub.pid}\\)`));
      assert.match(second.stderr, new RegExp(`lock ${rep}\\.lock is held`));
    }
    qio(agent.uri('V1'), 'write -P 0x6d 3M 1M');
    await hub.converged('V1', img, rep);
  });

  it('after kill -9 of the hub a new hub starts on the same --data and recovery file, and converges', async () => {
    await hub.kill9();
    qio(agent.uri('V1'), 'write -P 0x7e 5M 1M'); // written while no hub runs
    await hub.start(); // same args, same ports: the agent reconnects
    await hub.converged('V1', img, rep);
  });

  it('POST without the token is 401, with a non-JSON content type 415, and nothing runs; with both it runs', async () => {
    const token = fs.readFileSync(hub.adminTokenFile, 'utf8').trim();
    assert.equal(fs.statSync(hub.adminTokenFile).mode & 0o777, 0o600, 'the default token file is private');
    const refusals: [Record<string, string>, number][] = [
      [{ 'content-type': 'application/json' }, 401],
      [{ 'content-type': 'application/json', authorization: 'Bearer not-the-token' }, 401],
      [{ 'content-type': 'text/plain', authorization: `Bearer ${token}` }, 415],
      [{ 'content-type': 'application/x-www-form-urlencoded', authorization: `Bearer ${token}` }, 415],
    ];
    for (const [headers, code] of refusals) {
      for (const action of ['/failover-test/start', '/failover']) {
        const r = await hub.postRaw(action, '{"force":true}', headers);
        assert.equal(r.status, code, `${action} ${JSON.stringify(headers)}`);
        assert.equal(typeof r.body.error, 'string');
      }
    }
    const st = await hub.status();
    assert.equal(st.failoverTest, null, 'no failover test started');
    assert.equal(st.failover ?? null, null, 'no failover');
    assert.equal((await hub.volume('V1')).state, 'protecting');
    const started = await hub.post('/failover-test/start');
    assert.equal(started.status, 200, JSON.stringify(started.body));
    assert.notEqual((await hub.status()).failoverTest, null);
    assert.equal((await hub.post('/failover-test/stop')).status, 200);
  });

  it('the CLI sends the token from --admin-token-file or REPHUB_ADMIN_TOKEN_FILE; a wrong one is refused', async () => {
    const url = `http://127.0.0.1:${hub.httpPort}`;
    const wrong = path.join(dir, 'wrong-token');
    fs.writeFileSync(wrong, 'nope\n', { mode: 0o600 });
    const refused = await cli('failover-test', 'start', '--hub', url, '--admin-token-file', wrong);
    assert.notEqual(refused.status, 0);
    assert.match(refused.out, /Authorization: Bearer/);
    assert.equal((await hub.status()).failoverTest, null);
    const missing = await cli('failover-test', 'start', '--hub', url, '--admin-token-file', path.join(dir, 'none'));
    assert.notEqual(missing.status, 0);
    assert.match(missing.out, /admin token file .*none/);
    const ok = await cli('failover-test', 'start', '--hub', url, '--admin-token-file', hub.adminTokenFile);
    assert.equal(ok.status, 0, ok.out);
    assert.match(ok.out, /^V1\tnbd:\/\//m);
    assert.notEqual((await hub.status()).failoverTest, null);
    const r = await runToExit([CLI, 'failover-test', 'stop', '--hub', url], 30_000, {
      ...process.env,
      REPHUB_ADMIN_TOKEN_FILE: hub.adminTokenFile,
    });
    assert.equal(r.status, 0, r.stderr);
    assert.equal((await hub.status()).failoverTest, null);
  });

  it('a hub given an empty or unreadable --admin-token-file refuses to start (exit 2)', async () => {
    const empty = path.join(dir, 'empty-token');
    fs.writeFileSync(empty, '\n');
    for (const [file, why] of [
      [empty, /admin token file .*empty-token is empty/],
      [path.join(dir, 'missing'), /admin token file .*missing: ENOENT/],
    ] as const) {
      const r = await runHub(
        '--vol',
        `V2=${path.join(dir, 'V2R')}`,
        '--data',
        path.join(dir, 'hub3'),
        '--admin-token-file',
        file,
      );
      assert.equal(r.status, 2, r.stderr);
      assert.match(r.stderr, why);
    }
  });
});
