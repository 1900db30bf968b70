// A real agent process against a silent seed hub (SPEC §6.1): the seed's sample hub reads frames,
// drops what it does not know (our HELLO), waits for REPORT_VM_VOLUMES and says nothing before
// it. The hub here is written from the seed protocol alone (its frames encoded by hand, not with
// protocol/): START_PROTECT, a full sync by remote reads, then every PROTECTED_WRITE applied.
// A real NBD client (qemu-io) writes through the agent; the replica must end byte-equal.
import { strict as assert } from 'node:assert';
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as path from 'node:path';
import { execFileSync } from 'node:child_process';
import { tmpdir, makeImage, waitFor } from './harness/util';
import { AgentProcess, v1Agent } from './harness/agent-process';

const MiB = 1 << 20;
const MAGIC = 0x42485052;
const SEED = { PROTECTED_WRITE: 2, REPORT_VM_VOLUMES: 3, START_PROTECT: 4, REMOTE_IO_REQ: 5, REMOTE_IO_RES: 6 };
const SYNC_CHUNK = 1 * MiB;

function frame(cmd: number, payload: Buffer): Buffer {
  const h = Buffer.alloc(12);
  h.writeUInt32LE(MAGIC, 0);
  h.writeUInt16LE(cmd, 4);
  h.writeUInt32LE(payload.length, 8);
  return Buffer.concat([h, payload]);
}

/** The seed hub: one volume V1 kept in memory; `frames` counts what it got, by command. */
class SilentSeedHub {
  readonly frames = new Map<number, number>();
  replica: Buffer;
  synced = false;
  private server = net.createServer((s) => this.serve(s));
  port = 0;

  constructor(readonly size: number) {
    this.replica = Buffer.alloc(size);
  }

  async listen(): Promise<void> {
    await new Promise<void>((r) => this.server.listen(0, '127.0.0.1', r));
    this.port = (this.server.address() as net.AddressInfo).port;
  }

  close(): Promise<void> {
    return new Promise((r) => this.server.close(() => r()));
  }

  private serve(s: net.Socket): void {
    let buf = Buffer.alloc(0);
    const reads = new Map<number, number>(); // req id -> offset
    let next = 0,
      reqId = 0;
    const readNext = () => {
      if (next >= this.size) return;
      const len = Math.min(SYNC_CHUNK, this.size - next);
      const p = Buffer.alloc(28);
      p.writeUInt32LE(++reqId, 0);
      p.writeUInt32LE(len / 512, 4);
      p.writeBigUInt64LE(1n, 8);
      p.writeBigUInt64LE(BigInt(next / 512), 16);
      p.writeUInt32LE(1, 24);
      reads.set(reqId, next);
      next += len;
      s.write(frame(SEED.REMOTE_IO_REQ, p));
    };
    const onFrame = (cmd: number, p: Buffer) => {
      this.frames.set(cmd, (this.frames.get(cmd) ?? 0) + 1);
      if (cmd === SEED.REPORT_VM_VOLUMES) {
        const name = Buffer.from('V1');
        const sp = Buffer.alloc(10 + name.length);
        sp.writeBigUInt64LE(1n, 0);
        sp.writeUInt16LE(name.length, 8);
        name.copy(sp, 10);
        s.write(frame(SEED.START_PROTECT, sp));
        readNext();
      } else if (cmd === SEED.REMOTE_IO_RES) {
        const off = reads.get(p.readUInt32LE(0))!;
        assert.equal(p.readInt32LE(4), 0, 'remote read failed');
        reads.delete(p.readUInt32LE(0));
        p.copy(this.replica, off, 16);
        if (next >= this.size && reads.size === 0) this.synced = true;
        else readNext();
      } else if (cmd === SEED.PROTECTED_WRITE) {
        const off = Number(p.readBigUInt64LE(8)) * 512;
        assert.equal(p.readInt32LE(20), 0);
        p.copy(this.replica, off, 24);
      } // anything else (our HELLO): dropped, as the seed hub drops an unknown command
    };
    s.on('data', (d) => {
      buf = Buffer.concat([buf, d]);
      while (buf.length >= 12) {
        assert.equal(buf.readUInt32LE(0), MAGIC, 'seed hub: bad magic');
        const len = buf.readUInt32LE(8);
        if (buf.length < 12 + len) break;
        onFrame(buf.readUInt16LE(4), buf.subarray(12, 12 + len));
        buf = buf.subarray(12 + len);
      }
    });
    s.on('error', () => {});
  }
}

describe('agent against a silent seed hub (SPEC §6.1)', function () {
  this.timeout(120_000);
  let dir: string, hub: SilentSeedHub, agent: AgentProcess;
  afterEach(async () => {
    await agent?.stop();
    await hub?.close();
    fs.rmSync(dir, { recursive: true, force: true });
  });

  it('waits for the first frame, then protects on the same connection as a legacy agent; its writes arrive', async () => {
    dir = tmpdir();
    const img = path.join(dir, 'V1.img');
    const size = 8 * MiB;
    makeImage(img, size, 0.5);
    hub = new SilentSeedHub(size);
    await hub.listen();
    agent = v1Agent(dir, img, hub.port);
    await agent.start();
    await waitFor(
      'the agent reports its volumes to the silent hub',
      () => hub.frames.get(SEED.REPORT_VM_VOLUMES),
      20_000,
    );
    assert.equal(hub.frames.get(1), 1, 'one HELLO, on one connection: no dialing again');
    await waitFor('initial sync', () => hub.synced, 30_000);
    execFileSync(
      'qemu-io',
      ['-f', 'raw', '-c', 'write -P 0x6b 1M 512k', '-c', 'write -P 0x11 5M 4k', '-c', 'flush', agent.uri('V1')],
      {
        stdio: 'ignore',
        timeout: 60_000,
      },
    );
    await waitFor('writes mirrored', () => hub.replica.equals(fs.readFileSync(img)), 20_000);
    const st = await agent.status();
    assert.ok(st.connected, 'agent is connected');
    assert.equal(hub.frames.get(1), 1, 'still the one HELLO: the connection never restarted');
    assert.ok((hub.frames.get(SEED.PROTECTED_WRITE) ?? 0) >= 2, 'the writes went as PROTECTED_WRITE');
    assert.match(agent.stderr, /assuming a seed hub/);
  });
});
