// An agent's last frames reach the hub in the same reads as its close: SPEC.md 5.7 says that if
// the hub read AGENT_SHUTDOWN, every write before it is applied and flushed, and the shutdown is
// clean. Before, a close seen while those frames still waited in the apply queue discarded them
// (over TLS a close_notify is read with the data; over TCP the FIN follows the last read).
// Real TCP and TLS on loopback, a raw agent, an in-process hub on real files and LMDB.
import { strict as assert } from 'node:assert';
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as path from 'node:path';
import * as tls from 'node:tls';
import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import {
  Cap,
  Cmd,
  ALL_CAPS,
  IO_OK,
  Limits,
  FrameDecoder,
  decode,
  encodeAgentShutdown,
  encodeHello,
  encodeProtectedWriteHead,
  encodeReportVmVolumes,
} from '../protocol';
import { Hub } from '../src/hub/hub';
import { openFileTarget } from '../src/hub/replica-spec';
import type { BlockTarget } from '../storage/volume';
import { LmdbStateStore } from '../storage/state';
import pino from 'pino';
import { MiB, tmpdir, readRegion, sleep, waitFor } from './harness/util';

// The recovery volume's file is held shut (a disk that stalls): its writes wait for the test to
// open it, and without writeSync every write takes the apply queue. The hub reads the whole
// burst and its close with the writes queued; only then does the disk move again.
const WRITES = 256; // of 4 KiB
const STOP_WAIT_MS = 300; // a stop's wait for the failover operation under way (10 s in a real hub)

/** The file's own target; its writes wait until `open` resolves (no writeSync: all are async). */
function stalled(t: BlockTarget, open: Promise<void>): BlockTarget {
  return new Proxy(t, {
    get(o, k) {
      if (k === 'write') return async (buf: Buffer, off: number) => (await open, o.write(buf, off));
      if (k === 'writeSync') return undefined;
      const v = Reflect.get(o, k);
      return typeof v === 'function' ? v.bind(o) : v;
    },
  });
}

describe('hub: the frames an agent sent before closing are applied (SPEC.md 5.7)', () => {
  let dir: string;
  before(() => {
    dir = tmpdir('shutdown-drain-');
    execFileSync('bash', [path.join(__dirname, '../../tools/make-certs.sh'), dir, '127.0.0.1', 'vm1']);
  });
  after(() => fs.rmSync(dir, { recursive: true, force: true }));

  const f = (n: string) => path.join(dir, n);

  /** A hub on real files whose recovery volume's disk stalls until `openDisk()`. */
  function stalledHub(transport: 'tcp' | 'tls', name: string) {
    const logLines: Record<string, unknown>[] = []; // the hub's log, parsed
    let openDisk = () => {};
    const disk = new Promise<void>((r) => (openDisk = r));
    const hub = new Hub({
      volumes: [{ name: 'V1', path: f(`V1R-${name}`) }],
      store: new LmdbStateStore(f(`hub-${name}`)),
      log: pino({ level: 'info' }, { write: (line: string) => void logLines.push(JSON.parse(line)) }),
      openTarget: (p, size, holds) => stalled(openFileTarget(p, size, holds) as BlockTarget, disk),
      tls: transport === 'tls' ? { cert: f('hub.pem'), key: f('hub.key'), ca: f('ca.pem') } : undefined,
      stopWaitMs: STOP_WAIT_MS,
    });
    return { hub, openDisk, rep: f(`V1R-${name}`), logLines };
  }

  /** `body` on a stalledHub; the disk is opened and the hub closed after it, whatever happens. */
  async function withStalledHub(
    transport: 'tcp' | 'tls',
    name: string,
    body: (h: ReturnType<typeof stalledHub>) => Promise<void>,
  ) {
    const h = stalledHub(transport, name);
    try {
      await body(h);
    } finally {
      h.openDisk();
      await h.hub.close();
    }
  }

  /** A raw agent of VM vm1 that reports V1; `volumeId` once the hub starts protecting it. */
  async function rawAgent(transport: 'tcp' | 'tls', port: number) {
    const sock: net.Socket =
      transport === 'tls'
        ? tls.connect({
            port,
            host: '127.0.0.1',
            cert: fs.readFileSync(f('vm1.pem')),
            key: fs.readFileSync(f('vm1.key')),
            ca: fs.readFileSync(f('ca.pem')),
          })
        : net.connect(port, '127.0.0.1');
    await new Promise((r) => sock.once(transport === 'tls' ? 'secureConnect' : 'connect', r));
    const a = { sock, volumeId: -1, errors: [] as string[], acked: 0 };
    const fromHub = new FrameDecoder((cmd, p) => {
      const m = decode(cmd, Buffer.from(p)) as { volumeId?: number; message?: string; seq?: number };
      if (cmd === Cmd.START_PROTECT) a.volumeId = m.volumeId!;
      if (cmd === Cmd.WRITE_ACK) a.acked = m.seq!;
      if (cmd === Cmd.ERROR) a.errors.push(m.message!);
    });
    sock.on('data', (b) => fromHub.push(b));
    sock.on('error', () => {});
    // WRITE_ACK and DIRTY_REPORT: the hub waits for the agent's report, so it asks for no reads
    sock.write(
      Buffer.concat([
        encodeHello(1, ALL_CAPS & ~Cap.FRAME_CRC & ~Cap.IDENTITY, Limits.maxPayload, 'vm1'),
        encodeReportVmVolumes([{ name: 'V1', sizeBytes: 64 * MiB }]),
      ]),
    );
    return a;
  }

  /** WRITES writes of 4 KiB from offset 0, each its own frame. */
  function writes(volumeId: number, data: Buffer): Buffer[] {
    const out: Buffer[] = [];
    for (let i = 0; i < WRITES; i++)
      out.push(encodeProtectedWriteHead(volumeId, i * 8, 8, IO_OK), data.subarray(i * 4096, (i + 1) * 4096));
    return out;
  }

  /**
   * An agent protects V1, then sends WRITES writes (random data) and `after`, and closes at once
   * (FIN, and close_notify over TLS); resolves once the hub saw the session end, its disk still
   * stalled, so the frames wait in the apply queue.
   */
  async function burstThenClose(hub: Hub, transport: 'tcp' | 'tls', after: Buffer[] = []) {
    const { port } = await hub.listen('127.0.0.1', 0);
    const a = await rawAgent(transport, port);
    await waitFor('START_PROTECT', () => a.volumeId >= 0, 10_000, 5);
    const data = randomBytes(WRITES * 4096);
    a.sock.end(Buffer.concat([...writes(a.volumeId, data), ...after]));
    await waitFor('session ended', () => hub.status().agents.length === 0, 20_000, 10);
    return { port, data, agent: a };
  }

  for (const transport of ['tcp', 'tls'] as const) {
    it(`${transport}: writes, AGENT_SHUTDOWN and the close in one burst: every write lands, the shutdown is clean`, async () => {
      await withStalledHub(transport, transport, async ({ hub, openDisk, rep, logLines }) => {
        const { data, agent } = await burstThenClose(hub, transport, [encodeAgentShutdown()]);
        const v = hub.replicas.get('V1')!;
        openDisk(); // the hub saw the close with the writes still queued behind the stalled disk
        await waitFor('replica let go', () => v.owner === null, 20_000, 10);
        await v.idle;
        assert.equal(v.state, 'stopped', 'AGENT_SHUTDOWN was read: the shutdown is clean, not a degraded volume');
        assert.equal(v.record!.cleanShutdown, true);
        assert.ok(
          readRegion(rep, 0, data.length).equals(data),
          'every write sent before AGENT_SHUTDOWN is on the recovery volume',
        );
        const closed = logLines.find((l) => l.msg === 'agent session closed')!;
        assert.equal(closed.clean, true);
        assert.equal(
          closed.acked,
          agent.acked,
          'the log counts the acks the agent could hear, not those after the close',
        );
        assert.equal(closed.received, WRITES);
      });
    });
  }

  it('a second REPORT_VM_VOLUMES among the frames applied after the close: the session still lets go', async () => {
    await withStalledHub('tcp', 'report2', async ({ hub, openDisk }) => {
      const again = encodeReportVmVolumes([{ name: 'V1', sizeBytes: 64 * MiB }]); // SPEC.md 5.3: may come again
      const { port } = await burstThenClose(hub, 'tcp', [again]);
      openDisk();
      const v = hub.replicas.get('V1')!;
      await waitFor('replica let go (the report did not wait for its own session)', () => v.owner === null, 20_000, 10);
      const second = await rawAgent('tcp', port);
      await waitFor('a reconnect protects V1', () => second.volumeId >= 0, 20_000, 5);
      assert.deepEqual(second.errors, []);
      second.sock.destroy();
    });
  });

  it('a hub stopping while an ended session still applies waits for it: the shutdown it read is recorded', async () => {
    const { hub, openDisk, rep } = stalledHub('tcp', 'stop');
    let closed = false;
    try {
      const { data } = await burstThenClose(hub, 'tcp', [encodeAgentShutdown()]);
      const stop = hub.close().then((failed) => ((closed = true), failed));
      await sleep(500); // ample for a stop that does not wait (it takes ~50 ms here)
      assert.equal(closed, false, 'the stop waits while the queued frames cannot land');
      openDisk();
      assert.equal(await stop, 0, 'no stop step failed (none closed the volume under the drain)');
      const v = hub.replicas.get('V1')!;
      assert.equal(v.state, 'stopped');
      assert.equal(v.record!.cleanShutdown, true);
      assert.ok(readRegion(rep, 0, data.length).equals(data));
    } finally {
      if (!closed) {
        openDisk();
        await hub.close();
      }
    }
  });

  it('a failover asked while an ended session still applies starts once it let go, with every write', async () => {
    await withStalledHub('tcp', 'failover', async ({ hub, openDisk, rep }) => {
      const { data } = await burstThenClose(hub, 'tcp'); // the protected site goes away
      // not promoted while the session still writes to it (its writes would only be recorded)
      const failover = hub.failover.failoverNow({ force: true }); // never synced whole: torn, so forced
      openDisk();
      const r = await failover;
      assert.deepEqual(
        r.volumes.map((v) => (v as { name: string }).name),
        ['V1'],
      );
      assert.ok(readRegion(rep, 0, data.length).equals(data), 'the promoted volume holds every write received');
    });
  });

  it('a failover still waiting for the session when the hub stops is refused: nothing promoted after the stop', async () => {
    const { hub, openDisk, logLines } = stalledHub('tcp', 'failover-stop');
    let stop: Promise<number> | null = null;
    try {
      await burstThenClose(hub, 'tcp');
      const failover = hub.failover.failoverNow({ force: true }).then(
        () => 'promoted',
        (e: Error) => e.message,
      );
      await sleep(50);
      stop = hub.close();
      await sleep(STOP_WAIT_MS + 200); // the stop gave up waiting for the failover and went on
      openDisk(); // the session lets go now, under a hub that is stopping
      assert.equal(await stop, 0, 'no stop step failed');
      assert.match(await failover, /the hub is stopping/);
      assert.notEqual(hub.replicas.get('V1')!.state, 'failed-over', 'the volume was not promoted');
      assert.ok(!logLines.some((l) => /promoted/.test(String(l.msg))), 'no promotion was logged');
    } finally {
      openDisk();
      await (stop ?? hub.close());
    }
  });

  it('a volume removal asked meanwhile waits for the session to let go; a second removal is refused', async () => {
    await withStalledHub('tcp', 'remove', async ({ hub, openDisk, rep }) => {
      const { data } = await burstThenClose(hub, 'tcp');
      const removals = Promise.allSettled([hub.removeVolume('V1'), hub.removeVolume('V1')]);
      openDisk();
      const [first, second] = await removals;
      assert.equal(first.status, 'fulfilled');
      assert.equal(second.status, 'rejected');
      assert.match((second as PromiseRejectedResult).reason.message, /being removed/);
      assert.ok(readRegion(rep, 0, data.length).equals(data), 'the recovery volume was closed after the last write');
    });
  });

  it('a reconnect of the same VM while the ended session still applies waits for it, and is not refused', async () => {
    await withStalledHub('tcp', 'reconnect', async ({ hub, openDisk, rep }) => {
      const { port, data } = await burstThenClose(hub, 'tcp'); // a close without AGENT_SHUTDOWN
      const second = await rawAgent('tcp', port);
      await waitFor('second HELLO', () => hub.status().agents[0]?.vm === 'vm1', 10_000, 5);
      assert.equal(second.volumeId, -1, 'the report waits while the ended session holds the volume');
      openDisk();
      await waitFor('second session protects V1', () => second.volumeId >= 0, 20_000, 5);
      assert.deepEqual(second.errors, [], 'not refused as "already protected by another agent session"');
      assert.ok(readRegion(rep, 0, data.length).equals(data), "the first session's writes landed before the takeover");
      second.sock.destroy();
    });
  });
});
