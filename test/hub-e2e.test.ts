import { strict as assert } from 'node:assert';
import * as path from 'node:path';
import { randomBytes, randomInt } from 'node:crypto';
import { Hub } from '../src/hub/hub';
import { LmdbStateStore } from '../storage/state';
import { silentLogger } from '../src/log';
import { tmpdir, makeImage, sha, waitFor } from './harness/util';
import { startTestAgent } from './harness/test-agent';

describe('hub end to end over TCP (in-process hub, test agent)', () => {
  it('initial sync with writes during sync converges byte-equal', async () => {
    const dir = tmpdir();
    const img = path.join(dir, 'V1.img'),
      rep = path.join(dir, 'V1R');
    makeImage(img, 16 << 20);
    const hub = new Hub({
      volumes: [{ name: 'V1', path: rep }],
      store: new LmdbStateStore(path.join(dir, 'hub')),
      log: silentLogger(),
      session: { maxInflightReads: 2, maxReadBytes: 128 << 10 },
    });
    const { port } = await hub.listen('127.0.0.1', 0);
    const agent = startTestAgent({ port, images: { V1: img } });
    // write while the initial sync runs
    for (let i = 0; i < 200; i++) {
      await agent.write('V1', randomInt(0, (16 << 20) / 4096) * 4096, randomBytes(4096));
      if (i % 20 === 0) await new Promise((r) => setTimeout(r, 2));
    }
    await waitFor('protecting', () => hub.replicas.get('V1')!.state === 'protecting');
    await waitFor('byte-equal', () => sha(img) === sha(rep));
    assert.ok(hub.replicas.get('V1')!.record!.syncPass >= 0);
    await agent.stop();
    await waitFor('stopped', () => hub.replicas.get('V1')!.state === 'stopped');
    await hub.close();
  });
});

describe('hub: several agents, a misbehaving peer, a volume claimed twice', () => {
  it('a garbage peer and a second claimant are refused while two good agents converge', async () => {
    const net = await import('node:net');
    const { encodeHello, encodeReportVmVolumes, FrameDecoder, decode, Cmd, Cap, ErrorCode, ALL_CAPS, Limits } =
      await import('../protocol');
    const dir = tmpdir();
    const a = path.join(dir, 'A.img'),
      b = path.join(dir, 'B.img');
    makeImage(a, 8 << 20);
    makeImage(b, 4 << 20);
    const hub = new Hub({
      volumes: [
        { name: 'A', path: path.join(dir, 'AR') },
        { name: 'B', path: path.join(dir, 'BR') },
      ],
      store: new LmdbStateStore(path.join(dir, 'hub')),
      log: silentLogger(),
    });
    const { port } = await hub.listen('127.0.0.1', 0);
    await hub.listenHttp('127.0.0.1', 0);
    const agentA = startTestAgent({ port, vm: 'vmA', images: { A: a } });
    const agentB = startTestAgent({ port, vm: 'vmB', images: { B: b } });

    // garbage: a bad magic closes that session only, with an ERROR frame first
    const errs: number[] = [];
    const bad = net.connect(port, '127.0.0.1');
    const badDec = new FrameDecoder((cmd, p) => {
      const m = decode(cmd, p);
      if (m.cmd === Cmd.ERROR) errs.push(m.code);
    });
    bad.on('data', (c) => badDec.push(c));
    const badClosed = new Promise((r) => bad.on('close', r));
    bad.write(Buffer.from('GET / HTTP/1.1\r\n\r\n'));
    await badClosed;
    assert.deepEqual(errs, [ErrorCode.PROTOCOL]);

    await waitFor('both protecting', () => [...hub.replicas.values()].every((r) => r.state === 'protecting'));
    // another VM claiming A while vmA holds it is refused, not merged
    const thief = net.connect(port, '127.0.0.1');
    const got: string[] = [];
    const dec = new FrameDecoder((cmd, p) => {
      const m = decode(cmd, p);
      got.push(m.cmd === Cmd.ERROR ? `ERROR ${m.code}` : Cmd[m.cmd]);
    });
    thief.on('data', (c) => dec.push(c));
    thief.write(encodeHello(1, ALL_CAPS & ~Cap.FRAME_CRC & ~Cap.IDENTITY, Limits.maxPayload, 'vmX')); // plain frames, no IDENTITY
    thief.write(encodeReportVmVolumes([{ name: 'A', sizeBytes: 8 << 20 }]));
    await waitFor('refusal', () => got.includes(`ERROR ${ErrorCode.VOLUME_REFUSED}`));
    assert.ok(!got.includes('START_PROTECT'));
    thief.destroy();

    await agentA.write('A', 4096, Buffer.alloc(8192, 7));
    await waitFor('A equal', () => sha(a) === sha(path.join(dir, 'AR')));
    await waitFor('B equal', () => sha(b) === sha(path.join(dir, 'BR')));
    const st = hub.status();
    const va = st.volumes.find((v) => v.name === 'A')!;
    assert.equal(va.state, 'protecting');
    assert.equal(va.recovery, path.join(dir, 'AR'));
    assert.equal(va.sizeBytes, 8 << 20);
    assert.equal(va.dirtyBytes, 0);
    assert.equal(va.vm, 'vmA');
    assert.deepEqual(st.agents.map((x) => x.vm).sort(), ['vmA', 'vmB']);
    await agentA.stop();
    await agentB.stop();
    await hub.close();
  });
});

describe('hub: idle connections cannot hold the session slots', () => {
  it('connections that never report volumes are closed after the handshake deadline; an agent then gets in', async () => {
    const net = await import('node:net');
    const dir = tmpdir();
    const img = path.join(dir, 'V1.img');
    makeImage(img, 2 << 20);
    const hub = new Hub({
      volumes: [{ name: 'V1', path: path.join(dir, 'V1R') }],
      store: new LmdbStateStore(path.join(dir, 'hub')),
      log: silentLogger(),
      maxSessions: 3,
      session: { handshakeMs: 300 },
    });
    const { port } = await hub.listen('127.0.0.1', 0);
    const idle = [0, 1, 2].map(() => net.connect(port, '127.0.0.1'));
    await waitFor('slots taken', () => hub.sessions.size === 3);
    await waitFor('idle sessions dropped', () => hub.sessions.size === 0); // they never even read
    const agent = startTestAgent({ port, images: { V1: img } });
    await waitFor('protecting', () => hub.replicas.get('V1')!.state === 'protecting');
    await agent.stop();
    for (const s of idle) s.destroy();
    await hub.close();
  });
});
