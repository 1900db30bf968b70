// A guest that flushes after every write (issue 17's flush job) with the real agent and hub
// processes and a real NBD client: the agent's FLUSH markers to the hub are coalesced (at most
// one per --flush-marker-gap), so the hub takes far fewer journal points than the guest made
// flushes, yet the newest point, sent when the gap ended, holds the guest's last flushed write.
// Each flush is the agent's only request in flight, so it syncs the image on the event loop
// (--loop-flush-max, src/agent/sync-flush.ts) and still sends its marker first.
import { strict as assert } from 'node:assert';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { execFileSync } from 'node:child_process';
import { tmpdir, makeImage, waitFor } from './harness/util';
import { HubProcess, v1Hub } from './harness/hub-process';
import { AgentProcess, v1Agent } from './harness/agent-process';

const MiB = 1 << 20;
const FLUSHES = 40;
const GAP_MS = 3000; // long, so that the whole run falls in one or two gaps however slow the machine

// One NBD connection: FLUSHES times a 4 KiB write of byte i at offset i * 64 KiB, then a flush.
const CLIENT = `
import nbd, sys
h = nbd.NBD()
h.connect_uri(sys.argv[1])
for i in range(${FLUSHES}):
    h.pwrite(bytes([0x40 + i]) * 4096, i * 65536)
    h.flush()
h.shutdown()
`;

describe('FLUSH markers of a guest flushing after every write (real agent, hub, NBD client)', function () {
  this.timeout(180_000);
  let dir: string, hub: HubProcess, agent: AgentProcess;

  afterEach(async () => {
    await agent?.stop();
    await hub?.stop();
    fs.rmSync(dir, { recursive: true, force: true });
  });

  it('coalesce into few journal points; the newest holds the last flushed write', async () => {
    dir = tmpdir();
    const img = path.join(dir, 'V1.img'),
      rep = path.join(dir, 'V1R');
    makeImage(img, 16 * MiB, 0.3);
    hub = v1Hub(dir, rep);
    await hub.start();
    // a limit no sync here reaches, so that every flush takes the loop whatever the machine's load
    agent = v1Agent(dir, img, hub.port, '--flush-marker-gap', String(GAP_MS), '--loop-flush-max', '1000');
    await agent.start();
    await hub.converged('V1', img, rep, 120_000);
    const points = async (): Promise<{ id: number; kind: string }[]> => {
      const listed: any = await (await fetch(`http://${hub.http}/checkpoints?vm=vm1`)).json();
      return listed.length ? listed[0].checkpoints : [];
    };
    const before = (await points()).length;

    const loopBefore = (await agent.status()).loopFlushes;
    execFileSync('/usr/bin/python3', ['-c', CLIENT, agent.uri('V1')], { timeout: 120_000 });
    const st = await agent.status();
    assert.deepEqual([st.loopFlushes - loopBefore, st.slowFlushes], [FLUSHES, 0], 'every flush synced on the loop');
    // the trailing marker leaves when the gap ends: a point holding the last write follows
    const last = FLUSHES - 1;
    const lastByte = async (at: number): Promise<number> => {
      const started = await hub.post('/failover-test/start', { vm: 'vm1', at: String(at) });
      assert.equal(started.status, 200, JSON.stringify(started.body));
      const uri = (started.body.volumes as { name: string; uri: string }[])[0].uri;
      const out = execFileSync('/usr/bin/python3', [
        '-c',
        `import nbd, sys\nh = nbd.NBD()\nh.connect_uri(sys.argv[1])\nprint(h.pread(1, ${last * 65536})[0])`,
        uri,
      ]).toString();
      assert.equal((await hub.post('/failover-test/stop', {})).status, 200);
      return Number(out.trim());
    };
    const newest = await waitFor(
      'a point holding the last flushed write',
      async () => {
        const pts = await points();
        const p = pts[pts.length - 1];
        return p && (await lastByte(p.id)) === 0x40 + last ? p : null;
      },
      GAP_MS * 4,
      500,
    );
    assert.equal(newest!.kind, 'flush');
    const made = (await points()).length - before;
    assert.ok(made >= 1 && made <= FLUSHES / 4, `${made} points for ${FLUSHES} guest flushes`);
  });
});
