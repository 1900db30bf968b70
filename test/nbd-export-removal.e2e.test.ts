// Removing a hub export (failover-test stop, failback) is refused while NBD clients are attached,
// naming the export and the count; with force it cuts them off: a client of a failover-test
// view after the test stops, and a client of a promoted recovery volume after failback, must
// see their connection closed and their next write fail (a write that still landed would be a
// silent divergence). The client is libnbd (python3 nbd module), a real NBD client.
import { strict as assert } from 'node:assert';
import * as fs from 'node:fs';
import * as net from 'node:net';
import { once } from 'node:events';
import { spawn, ChildProcess } from 'node:child_process';
import { sha, waitFor, readRegion } from './harness/util';
import { startProtectedPair } from './harness/pair';
import { HubProcess } from './harness/hub-process';
import { AgentProcess } from './harness/agent-process';

const MiB = 1 << 20;
const PYTHON = '/usr/bin/python3'; // the interpreter the distribution's libnbd bindings are built for

// Attach, write 4 KiB of 0xab at 0 and flush; then, on a line on stdin, write 4 KiB of 0xcd at
// 1 MiB and flush, and say whether that worked.
const CLIENT = `
import nbd, sys
h = nbd.NBD()
h.connect_uri(sys.argv[1])
h.pwrite(b'\\xab' * 4096, 0)
h.flush()
print('attached', flush=True)
sys.stdin.readline()
try:
    h.pwrite(b'\\xcd' * 4096, 1048576)
    h.flush()
    print('wrote', flush=True)
except nbd.Error as e:
    print('failed:', e, flush=True)
print('connection', 'closed' if h.aio_is_dead() or h.aio_is_closed() else 'open', flush=True)
`;

/** A raw fixed-newstyle client in transmission on `name` (EXPORT_NAME with NO_ZEROES). */
async function attachRaw(port: number, name: string): Promise<net.Socket> {
  const sock = net.connect(port, '127.0.0.1');
  sock.setNoDelay(true);
  let got = 0;
  const attached = new Promise<void>((resolve, reject) => {
    sock.on('data', (c: Buffer) => {
      got += c.length;
      if (got >= 18 + 10) resolve(); // the server's greeting, then the export's size and flags
    });
    sock.on('error', reject);
    sock.on('close', () => reject(new Error(`closed after ${got} bytes`)));
  });
  await once(sock, 'connect');
  const opt = Buffer.alloc(4 + 16 + name.length);
  opt.writeUInt32BE(3, 0); // FIXED_NEWSTYLE | NO_ZEROES
  opt.write('IHAVEOPT', 4, 'latin1');
  opt.writeUInt32BE(1, 12); // NBD_OPT_EXPORT_NAME
  opt.writeUInt32BE(name.length, 16);
  opt.write(name, 20, 'latin1');
  sock.write(opt);
  await attached;
  sock.removeAllListeners('close');
  return sock;
}

class HeldClient {
  private readonly proc: ChildProcess;
  private out = '';
  constructor(uri: string) {
    this.proc = spawn(PYTHON, ['-c', CLIENT, uri], { stdio: ['pipe', 'pipe', 'pipe'] });
    this.proc.stdout!.on('data', (c) => (this.out += c));
    this.proc.stderr!.on('data', (c) => (this.out += c));
  }
  async attached(): Promise<void> {
    await waitFor('NBD client attached', () => this.out.includes('attached'), 30_000);
  }
  /** Try the second write; what the client said about it and about its connection. */
  async writeAgain(): Promise<string> {
    this.proc.stdin!.write('\n');
    await waitFor('NBD client answered', () => /connection (closed|open)/.test(this.out), 30_000);
    return this.out;
  }
  kill(): void {
    this.proc.kill('SIGKILL');
  }
}

describe('removing an NBD export: refused while clients are attached, force closes them', function () {
  this.timeout(180_000);
  let dir: string,
    hub: HubProcess,
    agent: AgentProcess,
    img: string,
    rep: string,
    client: HeldClient | null = null;
  const size = 16 * MiB;
  const hubUri = (n: string) => `nbd://127.0.0.1:${hub.nbdPort}/${n}`;

  beforeEach(async () => {
    ({ dir, img, rep, hub, agent } = await startProtectedPair(size));
  });
  afterEach(async () => {
    client?.kill();
    client = null;
    await agent.stop();
    await hub.stop();
    fs.rmSync(dir, { recursive: true, force: true });
  });

  it('stopping a failover test closes the clients of its view: their next write fails', async () => {
    const started = await hub.post('/failover-test/start');
    assert.equal(started.status, 200, JSON.stringify(started.body));
    client = new HeldClient(hubUri('V1'));
    await client.attached();
    const view = (await hub.status()).volumes[0].failoverTest;
    assert.ok(view.activeBytes > 0, 'the first write reached the view');
    const refused = await hub.post('/failover-test/stop');
    assert.equal(refused.status, 409, 'refused while a client is attached: ' + JSON.stringify(refused.body));
    assert.match(refused.body.error, /V1 \(1 client\)/, 'the refusal names the export and its client count');
    assert.ok((await hub.status()).failoverTest, 'the test still runs after the refusal');
    const stopped = await hub.post('/failover-test/stop', { force: true });
    assert.equal(stopped.status, 200, JSON.stringify(stopped.body));
    const said = await client.writeAgain();
    assert.match(said, /failed:/, `the write after the test stopped must fail: ${said}`);
    assert.match(said, /connection closed/, `the hub closed the connection (not merely an IO error): ${said}`);
    assert.equal(sha(rep), sha(img), 'neither write reached the recovery volume');
  });

  it('a client that has just disconnected does not hold the stop back: attach, close, stop at once, 20 times', async () => {
    for (let i = 0; i < 20; i++) {
      const started = await hub.post('/failover-test/start');
      assert.equal(started.status, 200, JSON.stringify(started.body));
      const sock = await attachRaw(hub.nbdPort, 'V1');
      sock.destroy(); // its close reaches the hub as the stop does: a script's `nbdcopy; rephub failover-test stop`
      const stopped = await hub.post('/failover-test/stop');
      assert.equal(stopped.status, 200, `round ${i}: ${JSON.stringify(stopped.body)}`);
    }
  });

  it('a hub stopped while a failover-test stop waits for a client answers that stop, then closes; the test survives a restart', async () => {
    // The hub's own stop closes the NBD clients; a failover-test stop waiting for them to go
    // (whenIdle) then went on beside it, removing the view while the hub closed the store.
    const started = await hub.post('/failover-test/start');
    assert.equal(started.status, 200, JSON.stringify(started.body));
    const sock = await attachRaw(hub.nbdPort, 'V1');
    try {
      const stopping = hub.post('/failover-test/stop'); // waits up to 1 s for the client
      await new Promise((r) => setTimeout(r, 200));
      const ended = hub.stop(); // SIGTERM while it waits
      const refused = await stopping;
      assert.equal(refused.status, 409, 'the client was still attached: ' + JSON.stringify(refused.body));
      assert.match(refused.body.error, /V1 \(1 client\)/);
      await ended;
    } finally {
      sock.destroy();
    }
    assert.match(hub.logTail(5), /"msg":"rephub stopped"/);
    assert.doesNotMatch(hub.logTail(40), /stop: .* failed/, 'every step of the stop succeeded');
    await hub.start();
    assert.ok((await hub.status()).failoverTest, 'the failover test is still there after the restart');
    const stopped = await hub.post('/failover-test/stop');
    assert.equal(stopped.status, 200, JSON.stringify(stopped.body));
  });

  it('failback closes the clients of the promoted recovery volume: their next write fails', async () => {
    await waitFor('agent log clean', async () => await agent.clean());
    await agent.kill9();
    await waitFor('hub saw the agent go', async () => (await hub.status()).agents.length === 0);
    const fo = await hub.post('/failover');
    assert.equal(fo.status, 200, JSON.stringify(fo.body));
    client = new HeldClient(hubUri('V1'));
    await client.attached();
    await agent.start();
    await waitFor('agent attached', async () => (await hub.status()).agents.some((a: any) => a.volumes.includes('V1')));
    const refused = await hub.post('/failback');
    assert.equal(refused.status, 409, 'refused while a client is attached: ' + JSON.stringify(refused.body));
    assert.match(refused.body.error, /V1 \(1 client\)/, 'the refusal names the export and its client count');
    assert.equal((await hub.volume('V1')).state, 'failed-over', 'still failed over after the refusal');
    const fb = await hub.post('/failback', { force: true });
    assert.equal(fb.status, 200, JSON.stringify(fb.body));
    const said = await client.writeAgain();
    assert.match(said, /failed:/, `the write after failback must fail: ${said}`);
    assert.match(said, /connection closed/, `the hub closed the connection: ${said}`);
    await hub.converged('V1', img, rep, 60_000);
    assert.ok(readRegion(img, 0, 4096).equals(Buffer.alloc(4096, 0xab)), 'the write before failback came back');
    assert.ok(!readRegion(rep, MiB, 4096).equals(Buffer.alloc(4096, 0xcd)), 'the write after failback never landed');
  });
});
