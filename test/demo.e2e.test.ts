// `npm run demo` (tools/demo.sh) as an operator runs it: it must say "running" only when the hub
// and the agent are both up, and fail with exit 1 and the failed process's log when either
// cannot start, here because a port it needs is taken.
import { strict as assert } from 'node:assert';
import { ChildProcess, spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as path from 'node:path';
import { freePort } from './harness/ports';
import { endProcess } from './harness/child';
import { tmpdir, waitFor } from './harness/util';

const ROOT = path.join(__dirname, '..', '..');

type Ports = { hub: number; http: number; hubNbd: number; nbd: number; agentHttp: number };

interface DemoRun {
  proc: ChildProcess;
  out: string;
  err: string;
  exit: Promise<number | null>;
}

function startDemo(dir: string, p: Ports): DemoRun {
  const env = {
    ...process.env,
    DEMO_NO_BUILD: '1', // the suite runs on a fresh build already
    DEMO_DIR: dir,
    SIZE_MIB: '16',
    DEMO_HUB_PORT: String(p.hub),
    DEMO_HTTP_PORT: String(p.http),
    DEMO_HUB_NBD_PORT: String(p.hubNbd),
    DEMO_NBD_PORT: String(p.nbd),
    DEMO_AGENT_HTTP_PORT: String(p.agentHttp),
  };
  const proc = spawn('bash', ['tools/demo.sh'], { cwd: ROOT, env, stdio: ['ignore', 'pipe', 'pipe'] });
  const run: DemoRun = { proc, out: '', err: '', exit: new Promise((r) => proc.once('exit', (code) => r(code))) };
  proc.stdout!.on('data', (d) => (run.out += d));
  proc.stderr!.on('data', (d) => (run.err += d));
  return run;
}

async function ports(): Promise<Ports> {
  return {
    hub: await freePort(),
    http: await freePort(),
    hubNbd: await freePort(),
    nbd: await freePort(),
    agentHttp: await freePort(),
  };
}

/** A plain TCP listener holding a port, as another program would. */
async function occupy(): Promise<net.Server> {
  const s = net.createServer((c) => c.destroy());
  await new Promise<void>((r) => s.listen(0, '127.0.0.1', r));
  return s;
}

const portOf = (s: net.Server) => (s.address() as net.AddressInfo).port;

async function answers(url: string): Promise<boolean> {
  try {
    return (await fetch(url)).ok;
  } catch {
    return false;
  }
}

describe('npm run demo (tools/demo.sh)', function () {
  this.timeout(120_000);
  let demo: DemoRun | undefined;
  let blocker: net.Server | undefined;
  const dirs: string[] = [];

  afterEach(async () => {
    if (demo) await endProcess(demo.proc, 'SIGTERM', 15_000);
    demo = undefined;
    blocker?.close();
    blocker = undefined;
  });
  after(() => {
    for (const d of dirs) fs.rmSync(d, { recursive: true, force: true });
  });

  for (const who of ['hub', 'agent'] as const) {
    it(`exits 1 without saying "running" when the ${who}'s port is taken`, async () => {
      const dir = tmpdir('rephub-demo-');
      dirs.push(dir);
      blocker = await occupy();
      const p = await ports();
      if (who === 'hub') p.hub = portOf(blocker);
      else p.nbd = portOf(blocker);
      demo = startDemo(dir, p);
      const code = await demo.exit;
      assert.equal(code, 1, `demo exit code; stdout:\n${demo.out}\nstderr:\n${demo.err}`);
      assert.doesNotMatch(demo.out, /running/);
      assert.match(demo.err, new RegExp(`the ${who} failed to start`));
      assert.match(demo.err, /EADDRINUSE/); // the failed process's own line, from its log
      // Nothing is left behind: the other process was stopped too.
      const other = who === 'hub' ? p.agentHttp : p.http;
      assert.equal(await answers(`http://127.0.0.1:${other}/status`), false, 'the other process still answers');
    });
  }

  it('says "running" once hub and agent answer, and stops both on SIGTERM', async () => {
    const dir = tmpdir('rephub-demo-');
    dirs.push(dir);
    const p = await ports();
    demo = startDemo(dir, p);
    const run = demo;
    await waitFor('"running"', () => run.out.includes('running') || run.proc.exitCode !== null, 60_000, 100);
    assert.match(run.out, /rephub demo running/, `stderr:\n${run.err}`);
    // "running" means both are up at that moment, not merely started.
    assert.ok(await answers(`http://127.0.0.1:${p.http}/status`), 'hub /status');
    const agent: any = await (await fetch(`http://127.0.0.1:${p.agentHttp}/status`)).json();
    assert.equal(agent.connected, true);
    run.proc.kill('SIGTERM');
    await run.exit;
    assert.equal(await answers(`http://127.0.0.1:${p.http}/status`), false, 'hub still up after the demo ended');
    assert.equal(await answers(`http://127.0.0.1:${p.agentHttp}/status`), false, 'agent still up after the demo ended');
    demo = undefined;
  });
});
