// The agent link with TLS: mutual certificates or a pre-shared key; plaintext, unknown
// certificates, wrong keys, identity mismatches and volumes bound to another VM are refused
// with a clear log line, and never disturb the authorized agent.
import { strict as assert } from 'node:assert';
import * as path from 'node:path';
import * as fs from 'node:fs';
import { Writable } from 'node:stream';
import { execFileSync, execFile } from 'node:child_process';
import { promisify } from 'node:util';
import pino from 'pino';
import { Hub } from '../src/hub/hub';
import { ReplicationAgent } from '../src/agent/agent';
import { DirtyLog } from '../storage/dirty-log';
import { FileVolume } from '../storage/volume';
import { LmdbStateStore } from '../storage/state';
import { clientOptions, TlsFiles } from '../src/security';
import { parseVolSpec } from '../src/cli/args';
import { tmpdir, makeImage, sha, waitFor } from './harness/util';

function capture(): { log: pino.Logger; lines: string[] } {
  const lines: string[] = [];
  const stream = new Writable({
    write(c, _e, cb) {
      lines.push(...c.toString().split('\n').filter(Boolean));
      cb();
    },
  });
  return { log: pino({ level: 'info' }, stream), lines };
}

describe('agent link security', function () {
  this.timeout(60_000);
  let dir: string, certs: string, other: string;
  const agents: ReplicationAgent[] = [];
  before(() => {
    dir = tmpdir();
    certs = path.join(dir, 'certs');
    other = path.join(dir, 'other');
    const mk = path.join(__dirname, '../../tools/make-certs.sh');
    execFileSync('bash', [mk, certs, '127.0.0.1', 'vm1', 'vm2']);
    execFileSync('bash', [mk, other, '127.0.0.1', 'vm1']); // a different CA
  });
  afterEach(async () => {
    for (const a of agents.splice(0)) await a.stop(200);
  });

  function agent(port: number, vm: string, img: string, vol: string, tlsFiles?: TlsFiles) {
    const target = FileVolume.open(img);
    const cap = capture();
    const a = new ReplicationAgent({
      hubHost: '127.0.0.1',
      hubPort: port,
      vm,
      log: cap.log,
      reconnectMaxMs: 200,
      volumes: [{ name: vol, target, log: DirtyLog.memory(target.sizeBytes, 65536) }],
      tls: tlsFiles ? clientOptions(tlsFiles, vm, '127.0.0.1') : undefined,
    });
    a.start();
    agents.push(a);
    return { a, lines: cap.lines };
  }

  it('mutual TLS: the authorized agent converges; plaintext, foreign CA, wrong VM and name spoofing are refused', async () => {
    const img = path.join(dir, 'V1.img'),
      rep = path.join(dir, 'V1R'),
      img2 = path.join(dir, 'V2.img');
    makeImage(img, 4 << 20);
    makeImage(img2, 4 << 20);
    const hubLog = capture();
    const hub = new Hub({
      volumes: [parseVolSpec(`V1=${rep}@vm1`), parseVolSpec(`V2=${path.join(dir, 'V2R')}@vm2`)],
      store: new LmdbStateStore(path.join(dir, 'hub1')),
      log: hubLog.log,
      tls: { cert: path.join(certs, 'hub.pem'), key: path.join(certs, 'hub.key'), ca: path.join(certs, 'ca.pem') },
    });
    const { port } = await hub.listen('127.0.0.1', 0);
    const c = (vm: string, d = certs) => ({
      cert: path.join(d, `${vm}.pem`),
      key: path.join(d, `${vm}.key`),
      ca: path.join(d, 'ca.pem'),
    });

    agent(port, 'vm1', img, 'V1', c('vm1'));
    await waitFor('V1 protecting over TLS', () => hub.replicas.get('V1')!.state === 'protecting');
    assert.equal(sha(img), sha(rep));
    assert.equal(hub.status().agents[0].vm, 'vm1');
    assert.ok(
      !hub.status().agents[0].caps.includes('frame_crc'),
      'no FRAME_CRC on a TLS link: TLS authenticates the records',
    );
    assert.ok(
      hubLog.lines.some((l) => /agent connected/.test(l) && /"cipher":"TLSv1.3 TLS_AES_128_GCM_SHA256"/.test(l)),
      'TLS 1.3 with AES-128-GCM, the cheapest suite with AES-NI, is what the link negotiates',
    );
    // writes of many TLS records each (the hub receives 16 KiB chunks and joins the frames)
    const big = Buffer.alloc(3 << 20);
    for (let i = 0; i < big.length; i += 4) big.writeUInt32LE((i * 2654435761) >>> 0, i);
    await Promise.all(
      [0, 1, 2].map((k) => agents[0].write('V1', (k << 20) + 4096, big.subarray(k << 20, (k + 1) << 20))),
    );
    await waitFor('V1 equal after 1 MiB writes over TLS', () => sha(img) === sha(rep));

    agent(port, 'vmP', img2, 'V2'); // plaintext
    await waitFor('plaintext refused', () => hubLog.lines.some((l) => /TLS handshake failed/.test(l)));
    const foreign = agent(port, 'vm1', img2, 'V2', c('vm1', other)); // cert from another CA, and does not trust our hub
    await waitFor('foreign CA: agent distrusts hub', () =>
      foreign.lines.some((l) => /TLS verification failed/.test(l)),
    );
    agent(port, 'vm2', img2, 'V1', c('vm2')); // vm2 claims vm1's volume
    await waitFor('bound volume refused', () => hubLog.lines.some((l) => /bound to another VM/.test(l)));
    // an agent whose certificate says vm2 but whose HELLO claims vm1
    const spoof = new ReplicationAgent({
      hubHost: '127.0.0.1',
      hubPort: port,
      vm: 'vm1',
      log: capture().log,
      reconnectMaxMs: 200,
      volumes: [{ name: 'V1', target: FileVolume.open(img2), log: DirtyLog.memory(4 << 20, 65536) }],
      tls: clientOptions(c('vm2'), 'vm2', '127.0.0.1'),
    });
    spoof.start();
    agents.push(spoof);
    await waitFor('spoofed name refused', () => hubLog.lines.some((l) => /but the link authenticated/.test(l)));
    assert.equal(
      hub.status().volumes.find((v) => v.name === 'V2')!.state,
      'unprotected',
      'nothing unauthorized got protected',
    );

    await agents[0].write('V1', 0, Buffer.alloc(65536, 9)); // the good agent was never disturbed
    await waitFor('V1 equal after refusals', () => sha(img) === sha(rep));
    for (const a of agents.splice(0)) await a.stop(200);
    await hub.close();
  });

  it('NBD exports with TLS: nbds:// with the CA works, plaintext nbd:// is refused', async () => {
    const img = path.join(dir, 'N1.img'),
      rep = path.join(dir, 'N1R');
    makeImage(img, 4 << 20);
    const files = {
      cert: path.join(certs, 'hub.pem'),
      key: path.join(certs, 'hub.key'),
      ca: path.join(certs, 'ca.pem'),
    };
    const hub = new Hub({
      volumes: [parseVolSpec(`N1=${rep}@vm1`)],
      store: new LmdbStateStore(path.join(dir, 'hub3')),
      log: capture().log,
      tls: files,
      nbdTls: true,
    });
    const { port } = await hub.listen('127.0.0.1', 0);
    const nbd = await hub.listenNbd('127.0.0.1', 0);
    agent(port, 'vm1', img, 'N1', {
      cert: path.join(certs, 'vm1.pem'),
      key: path.join(certs, 'vm1.key'),
      ca: path.join(certs, 'ca.pem'),
    });
    await waitFor('N1 protecting', () => hub.replicas.get('N1')!.state === 'protecting');
    await hub.failover.startTest({});
    // libnbd's x509 directory: the CA, and a client certificate since the hub has --tls-ca
    const cdir = path.join(dir, 'nbd-client');
    fs.mkdirSync(cdir, { recursive: true });
    fs.copyFileSync(path.join(certs, 'ca.pem'), path.join(cdir, 'ca-cert.pem'));
    fs.copyFileSync(path.join(certs, 'vm2.pem'), path.join(cdir, 'client-cert.pem'));
    fs.copyFileSync(path.join(certs, 'vm2.key'), path.join(cdir, 'client-key.pem'));
    // async: the hub's NBD server runs in this process
    const sh = async (uri: string) =>
      (await promisify(execFile)('nbdinfo', ['--size', uri], { timeout: 20_000 })).stdout.trim();
    assert.equal(await sh(`nbds://127.0.0.1:${nbd.port}/N1?tls-certificates=${cdir}`), String(4 << 20));
    await assert.rejects(sh(`nbd://127.0.0.1:${nbd.port}/N1`), /requires TLS/, 'plaintext NBD refused');
    await hub.failover.stopTest();
    for (const a of agents.splice(0)) await a.stop(200);
    await hub.close();
  });

  it('TLS with a pre-shared key: the right key converges, a wrong key is refused', async () => {
    const img = path.join(dir, 'P1.img'),
      rep = path.join(dir, 'P1R');
    makeImage(img, 4 << 20);
    const keys = path.join(dir, 'hub.psk'),
      good = path.join(dir, 'vm1.psk'),
      bad = path.join(dir, 'bad.psk');
    fs.writeFileSync(keys, 'vm1:00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff\n');
    fs.writeFileSync(good, 'vm1:00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff\n');
    fs.writeFileSync(bad, 'vm1:ffffffffffffffffffffffffffffffff\n');
    const hubLog = capture();
    const hub = new Hub({
      volumes: [parseVolSpec(`P1=${rep}@vm1`)],
      store: new LmdbStateStore(path.join(dir, 'hub2')),
      log: hubLog.log,
      tls: { pskFile: keys },
    });
    const { port } = await hub.listen('127.0.0.1', 0);
    agent(port, 'vm1', path.join(dir, 'V2.img'), 'P1', { pskFile: bad });
    await waitFor('wrong key refused', () => hubLog.lines.some((l) => /TLS handshake failed/.test(l)));
    for (const a of agents.splice(0)) await a.stop(200);
    agent(port, 'vm1', img, 'P1', { pskFile: good });
    await waitFor('P1 protecting over TLS-PSK', () => hub.replicas.get('P1')!.state === 'protecting');
    assert.equal(sha(img), sha(rep));
    assert.ok(
      hubLog.lines.some((l) => /agent connected/.test(l) && /"cipher":"TLSv1.2 PSK-AES128-GCM-SHA256"/.test(l)),
      'TLS-PSK negotiates AES-128-GCM',
    );
    await agents[0].write('P1', 1536, Buffer.alloc(2 << 20, 0xa5)); // not 4 KiB-aligned, many records
    await waitFor('P1 equal after a 2 MiB write over TLS-PSK', () => sha(img) === sha(rep));
    for (const a of agents.splice(0)) await a.stop(200);
    await hub.close();
  });
});
