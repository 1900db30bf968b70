// The daemons' signals, end to end with real hub and agent processes and real NBD clients:
// SIGHUP on the hub reloads its config file (an added volume reaches protecting with the agent
// that offers it, a removed one stops and keeps its record: added back, it resumes; a bad file
// changes nothing; other keys are logged as needing a restart); SIGHUP on the agent keeps it
// alive and logged; SIGTERM logs each step and a last line with the exit code, non-zero when the
// agent's drain timed out.
import { strict as assert } from 'node:assert';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { execFileSync } from 'node:child_process';
import type { ChildProcess } from 'node:child_process';
import { tmpdir, makeImage, waitFor, sleep } from './harness/util';
import { HubProcess } from './harness/hub-process';
import { AgentProcess } from './harness/agent-process';

const MiB = 1 << 20;
const qio = (uri: string, cmd: string) =>
  execFileSync('qemu-io', ['-f', 'raw', '-c', cmd, uri], { timeout: 60_000, stdio: ['ignore', 'pipe', 'pipe'] });

/** The exit code of `p` once it ends. */
const exitOf = (p: ChildProcess) =>
  new Promise<number | null>((r) => (p.exitCode !== null ? r(p.exitCode) : p.on('exit', (c) => r(c))));

describe('daemon signals: SIGHUP reload, SIGTERM steps (real processes)', function () {
  this.timeout(240_000);
  let dir: string, hub: HubProcess, agent: AgentProcess, hubToml: string;
  const img = (n: string) => path.join(dir, `${n}.img`);
  const rep = (n: string) => path.join(dir, `${n}R`);

  /** The hub's config file with these volumes (and extra lines). */
  const writeHubToml = (vols: string[], ...extra: string[]) =>
    fs.writeFileSync(
      hubToml,
      [`vol = [${vols.map((v) => `"${v}=${rep(v)}"`).join(', ')}]`, `data = "${path.join(dir, 'hub')}"`, ...extra].join(
        '\n',
      ) + '\n',
    );

  beforeEach(async () => {
    agent = undefined as unknown as AgentProcess;
    dir = tmpdir();
    hubToml = path.join(dir, 'hub.toml');
    makeImage(img('V1'), 8 * MiB, 0.5);
    makeImage(img('V2'), 8 * MiB, 0.5);
    writeHubToml(['V1']);
    hub = new HubProcess(['--config', hubToml]);
    await hub.start();
  });
  afterEach(async () => {
    await agent?.stop();
    await hub?.stop();
    fs.rmSync(dir, { recursive: true, force: true });
  });

  const startAgent = async (...extra: string[]) => {
    agent = new AgentProcess([
      '--hub',
      `127.0.0.1:${hub.port}`,
      '--export',
      `V1=${img('V1')}`,
      '--export',
      `V2=${img('V2')}`,
      '--state',
      path.join(dir, 'agent'),
      '--vm',
      'vm1',
      ...extra,
    ]);
    await agent.start();
  };
  const names = async () => ((await hub.status()).volumes as any[]).map((v) => v.name).sort();

  it('SIGHUP on the hub adds a volume (it reaches protecting) and removes one (stopped, record kept)', async () => {
    await startAgent();
    await hub.converged('V1', img('V1'), rep('V1'));
    assert.deepEqual(await names(), ['V1']);
    writeHubToml(['V2'], 'commit-interval = 3');
    hub.proc!.kill('SIGHUP');
    await waitFor('V2 added and V1 removed', async () => JSON.stringify(await names()) === '["V2"]', 30_000);
    await hub.converged('V2', img('V2'), rep('V2'));
    assert.match(hub.stderr, /"volume":"V2".*"msg":"volume added to protection"/);
    assert.match(
      hub.stderr,
      /"volume":"V1".*"msg":"volume removed from protection; its recovery volume is kept on disk untouched"/,
    );
    assert.match(hub.stderr, /"key":"commitIntervalMs".*"msg":"config reload: changed; needs a restart"/);
    assert.ok(fs.existsSync(rep('V1')), 'the removed recovery volume is left on disk');
    // V1 written while removed: added back, it resumes from its record and converges
    qio(agent.uri('V1'), 'write -P 0x3c 2M 1M');
    writeHubToml(['V1', 'V2']);
    hub.proc!.kill('SIGHUP');
    await waitFor('V1 back', async () => (await names()).includes('V1'), 30_000);
    await hub.converged('V1', img('V1'), rep('V1'));
    await hub.converged('V2', img('V2'), rep('V2'));
    // a broken file changes nothing, and the hub lives on
    fs.writeFileSync(hubToml, `vol = ["V1=${path.join(dir, 'nodir', 'X')}"]\n`);
    hub.proc!.kill('SIGHUP');
    await waitFor('reload refused', () => /config reload refused: nothing changed/.test(hub.stderr), 10_000);
    assert.match(hub.stderr, /"msg":"config reload: vol in .*hub\.toml V1=.*nodir.*does not exist"/);
    assert.deepEqual(await names(), ['V1', 'V2']);
    assert.equal(hub.exit, null, 'the hub still runs');
  });

  it('SIGHUP on the agent keeps it serving, logged; a changed key is logged as needing a restart', async () => {
    const agentToml = path.join(dir, 'agent.toml');
    fs.writeFileSync(agentToml, 'max-queue = "32M"\n');
    await startAgent('--config', agentToml);
    await hub.converged('V1', img('V1'), rep('V1'));
    fs.writeFileSync(agentToml, 'max-queue = "16M"\nlog-level = "debug"\n');
    agent.proc!.kill('SIGHUP');
    await waitFor('agent reloaded', () => /"msg":"config reloaded"/.test(agent.stderr), 10_000);
    assert.match(agent.stderr, /"signal":"SIGHUP".*"msg":"SIGHUP: reloading the config file"/);
    assert.match(agent.stderr, /"key":"maxQueue","from":"32M","to":"16M".*needs a restart/);
    assert.match(agent.stderr, /"to":"debug".*"msg":"config reload: log-level applied"/);
    agent.proc!.kill('SIGHUP'); // twice: still alive
    await sleep(300);
    assert.equal(agent.proc!.exitCode, null, 'the agent still runs');
    qio(agent.uri('V1'), 'write -P 0x21 0 1M');
    await hub.converged('V1', img('V1'), rep('V1'));
  });

  it('SIGTERM on the hub logs each step and a last line with exit code 0', async () => {
    await startAgent();
    await hub.converged('V1', img('V1'), rep('V1'));
    const code = exitOf(hub.proc!);
    hub.proc!.kill('SIGTERM');
    assert.equal(await code, 0);
    for (const step of [
      'shutting down',
      'stop: agent sessions closed',
      'stop: state store closed',
      'stop: locks released',
    ])
      assert.match(hub.stderr, new RegExp(`"msg":"${step}"`));
    assert.match(hub.stderr, /"exitCode":0,"failed":0,"msg":"rephub stopped"\}\n$/);
  });

  it('SIGTERM on the agent whose drain times out logs it and exits 1', async () => {
    await startAgent();
    await hub.converged('V1', img('V1'), rep('V1'));
    hub.proc!.kill('SIGSTOP'); // connected, but acks nothing
    try {
      qio(agent.uri('V1'), 'write -P 0x44 1M 1M');
      const code = exitOf(agent.proc!);
      agent.proc!.kill('SIGTERM');
      assert.equal(await code, 1, agent.stderr);
      assert.match(agent.stderr, /"timeoutMs":5000,"pendingWrites":[1-9]\d*.*"msg":"stop: the drain timed out/);
      assert.match(agent.stderr, /"exitCode":1,"msg":"rephub-agent stopped"/);
    } finally {
      hub.proc!.kill('SIGCONT');
    }
    await startAgent(); // the dirty log kept the write: it converges
    await hub.converged('V1', img('V1'), rep('V1'));
  });
});
