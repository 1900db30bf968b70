// A guest's zeroing (or a write that overflowed the link) reaches the hub only as an owed region,
// by DIRTY_REPORT. A guest flush after it must not reach the hub first: the hub, still
// protecting, would take a journal point that lacks the zeroing the guest completed before its
// flush. A real agent process, qemu-io's WRITE_ZEROES and flush through its NBD export, and a
// scripted hub that records the frames in the order they arrive.
import { strict as assert } from 'node:assert';
import * as net from 'node:net';
import * as path from 'node:path';
import { execFileSync } from 'node:child_process';
import { tmpdir, makeImage, MiB, waitFor } from './harness/util';
import { AgentProcess, v1Agent } from './harness/agent-process';
import {
  Cmd,
  Cap,
  PROTOCOL_VERSION,
  Limits,
  FrameDecoder,
  decode,
  encodeHello,
  encodeStartProtect,
  encodeDirtyReportAck,
  encodePong,
} from '../protocol';

describe('FLUSH marker after owed regions (scripted hub, real agent, qemu-io)', function () {
  this.timeout(60_000);
  let agent: AgentProcess | undefined, server: net.Server | undefined;
  const frames: number[] = []; // command of every frame the hub received, in order

  afterEach(async () => {
    await agent?.stop();
    server?.close();
  });

  it('a zeroing then a flush: the DIRTY_REPORT of the zeroed range reaches the hub before the FLUSH', async () => {
    server = net.createServer((sock) => {
      sock.on('error', () => undefined);
      const framer = new FrameDecoder((cmd, payload) => {
        const m = decode(cmd, payload);
        frames.push(m.cmd);
        if (m.cmd === Cmd.HELLO)
          sock.write(
            encodeHello(
              PROTOCOL_VERSION,
              Cap.WRITE_ACK | Cap.DIRTY_REPORT | Cap.FLUSH | Cap.PING,
              Limits.maxPayload,
              'h',
            ),
          );
        else if (m.cmd === Cmd.REPORT_VM_VOLUMES) sock.write(encodeStartProtect(1, 'V1'));
        else if (m.cmd === Cmd.DIRTY_REPORT) sock.write(encodeDirtyReportAck(m.volumeId, m.reportId));
        else if (m.cmd === Cmd.PING) sock.write(encodePong(m.nonce));
      });
      sock.on('data', (d) => framer.push(d));
    });
    await new Promise<void>((r) => server!.listen(0, '127.0.0.1', r));
    const dir = tmpdir('rephub-marker-order-');
    const img = path.join(dir, 'V1.img');
    makeImage(img, 8 * MiB, 0);
    agent = v1Agent(dir, img, (server.address() as net.AddressInfo).port);
    await agent.start();
    await waitFor('the initial report', () => frames.includes(Cmd.DIRTY_REPORT), 20_000);
    await new Promise((r) => setTimeout(r, 200));
    frames.length = 0;

    execFileSync('qemu-io', ['-f', 'raw', '-c', 'write -z 1M 64k', '-c', 'flush', agent.uri('V1')], { stdio: 'pipe' });
    await waitFor(
      'a report and a flush',
      () => frames.includes(Cmd.FLUSH) && frames.includes(Cmd.DIRTY_REPORT),
      10_000,
    );
    const report = frames.indexOf(Cmd.DIRTY_REPORT),
      flush = frames.indexOf(Cmd.FLUSH);
    assert.ok(report < flush, `frames in arrival order: ${frames.map((c) => Cmd[c]).join(', ')}`);
  });
});
