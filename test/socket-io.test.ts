// socketIo over a real loopback TCP socket. With a gather window (the agent's link to the hub):
// PROTECTED_WRITE frames of several event-loop turns leave together in one writev, in order, once
// the window's bytes fill (at the end of that turn) or its time passes; every other frame (the
// answers to the hub's reads and checksums, dirty reports, FLUSH, PING/PONG, HELLO, ERROR)
// releases the window at the end of its own turn, with the writes held before it, so an answer
// never waits for the window's time. Without a window each turn's frames leave at its end.
import { strict as assert } from 'node:assert';
import * as net from 'node:net';
import {
  Cap,
  Cmd,
  FrameDecoder,
  IO_OK,
  encodeChecksumRes,
  encodeDirtyReport,
  encodeError,
  encodeFlush,
  encodeHello,
  encodePing,
  encodePong,
  encodeProtectedWriteHead,
  encodeRemoteIoResHead,
} from '../protocol';
import { Link } from '../src/link/link';
import { socketIo } from '../src/link/socket-io';

interface Pair {
  client: net.Socket;
  received: Buffer[];
  writevs: number[]; // buffers per _writev/_write call on the client
  bytes(): number;
  close(): void;
}

async function pair(): Promise<Pair> {
  const received: Buffer[] = [];
  const server = net.createServer((s) => s.on('data', (d) => received.push(d)));
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const { port } = server.address() as net.AddressInfo;
  const client = net.connect({ host: '127.0.0.1', port });
  await new Promise<void>((r) => client.once('connect', r));
  client.setNoDelay(true);
  const writevs: number[] = [];
  const c = client as unknown as {
    _writev: (chunks: unknown[], cb: unknown) => void;
    _write: (...a: unknown[]) => void;
  };
  const wv = c._writev.bind(client),
    w = c._write.bind(client);
  c._writev = (chunks, cb) => (writevs.push(chunks.length), wv(chunks, cb));
  c._write = (...a) => (writevs.push(1), w(...a));
  return {
    client,
    received,
    writevs,
    bytes: () => received.reduce((n, b) => n + b.length, 0),
    close: () => (client.destroy(), server.close()),
  };
}

const turn = () => new Promise<void>((r) => setImmediate(r));
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
// The largest window gather.ts accepts: no batch in these tests lasts long enough to see it expire.
const LONG = { ms: 1000, bytes: 1 << 20 };

/** A PROTECTED_WRITE of `n` bytes, every data byte `i`: header and data as the mirror sends them. */
const write = (i: number, n = 4096) => [encodeProtectedWriteHead(1, i * 8, n / 512, IO_OK), Buffer.alloc(n, i)];

/** What arrived, frame by frame: [cmd, first payload byte past a PROTECTED_WRITE's header]. */
function frames(got: Buffer[], checksummed = false): Array<[number, number]> {
  const out: Array<[number, number]> = [];
  const dec = new FrameDecoder((cmd, payload) => out.push([cmd, cmd === Cmd.PROTECTED_WRITE ? payload[24] : -1]));
  if (checksummed) dec.requireChecksums();
  for (const b of got) dec.push(b);
  return out;
}

async function until(p: Pair, n: number): Promise<void> {
  while (p.bytes() < n) await sleep(2);
}

const frameBytes = (bufs: Buffer[]) => bufs.reduce((n, b) => n + b.length, 0);

// Every frame the agent sends that is not a mirrored write: the hub, or the agent's own
// governor and dead-peer rule, waits on each of them.
const OTHERS: Array<[string, () => Buffer[]]> = [
  ['REMOTE_IO_RES', () => [encodeRemoteIoResHead(7, IO_OK, 1, 4096), Buffer.alloc(4096, 0xee)]],
  ['CHECKSUM_RES', () => [encodeChecksumRes(7, IO_OK, 1, Buffer.alloc(16, 0xee))]],
  ['DIRTY_REPORT', () => [encodeDirtyReport(1, 1, 1, [{ offsetSectors: 0, sizeSectors: 8 }])]],
  ['FLUSH', () => [encodeFlush(2)]],
  ['PING', () => [encodePing(1)]],
  ['PONG', () => [encodePong(1)]],
  ['HELLO', () => [encodeHello(1, 0, 1 << 20, 'vm')]],
  ['ERROR', () => [encodeError(1, 'bye')]],
];

describe('socketIo', () => {
  it('gathers PROTECTED_WRITEs of several turns into one writev when the window fills, in order, each done called', async () => {
    const p = await pair();
    try {
      const io = socketIo(p.client, undefined, { ms: 1000, bytes: 64 << 10 });
      let done = 0;
      for (let i = 1; i <= 3; i++) {
        io.write(write(i, 8 << 10), () => done++);
        await turn();
      }
      await turn();
      assert.equal(p.writevs.length, 0, 'nothing leaves before the window fills or its time passes');
      const held = 3 * frameBytes(write(0, 8 << 10));
      assert.equal(io.queuedBytes(), held, 'held frames count as queued (the mirror limits on it)');
      io.write(write(4, 48 << 10), () => done++); // over 64 KiB held: out at the end of the turn
      assert.equal(p.writevs.length, 0, 'not inside the write that filled the window');
      await turn();
      assert.deepEqual(p.writevs, [8], 'the four frames in one writev');
      await until(p, held + frameBytes(write(4, 48 << 10)));
      assert.deepEqual(
        frames(p.received),
        [1, 2, 3, 4].map((i) => [Cmd.PROTECTED_WRITE, i]),
      );
      while (done < 4) await turn();
    } finally {
      p.close();
    }
  });

  it('releases PROTECTED_WRITEs under the size limit once the time passes, and re-arms for the next batch', async () => {
    const p = await pair();
    try {
      const io = socketIo(p.client, undefined, { ms: 5, bytes: 1 << 20 });
      const one = frameBytes(write(0));
      for (const i of [1, 2]) {
        io.write(write(i));
        await turn();
        io.write(write(i + 10));
        await until(p, 2 * i * one);
      }
      // (how the frames split between writevs depends on the turns' timing: not asserted)
      assert.equal(
        p.writevs.reduce((a, b) => a + b, 0),
        8,
        'each buffer written once',
      );
      assert.deepEqual(
        frames(p.received),
        [1, 11, 2, 12].map((i) => [Cmd.PROTECTED_WRITE, i]),
      );
    } finally {
      p.close();
    }
  });

  for (const [name, make] of OTHERS) {
    it(`${name} releases the window at the end of its turn, after the writes held before it`, async () => {
      const p = await pair();
      try {
        const io = socketIo(p.client, undefined, LONG);
        io.write(write(1));
        await turn();
        io.write(write(2));
        await turn();
        assert.equal(p.writevs.length, 0, 'the writes wait in the window');
        const other = make();
        io.write(other);
        io.write(write(3)); // sent after it in the same turn: leaves with it, behind it
        await turn();
        assert.equal(p.writevs.length, 1, `${name} released the window at the end of its turn`);
        await until(p, 3 * frameBytes(write(0)) + frameBytes(other));
        const cmd = other[0].readUInt16LE(4);
        assert.deepEqual(frames(p.received), [
          [Cmd.PROTECTED_WRITE, 1],
          [Cmd.PROTECTED_WRITE, 2],
          [cmd, -1],
          [Cmd.PROTECTED_WRITE, 3],
        ]);
      } finally {
        p.close();
      }
    });
  }

  it('an answer alone leaves at the end of its turn, and the window gathers again after it', async () => {
    const p = await pair();
    try {
      const io = socketIo(p.client, undefined, LONG);
      const answer = [encodeRemoteIoResHead(9, IO_OK, 1, 512), Buffer.alloc(512, 1)];
      io.write(answer);
      await turn();
      assert.deepEqual(p.writevs, [2], 'the answer left at the end of its turn');
      io.write(write(5));
      await turn();
      await turn();
      assert.deepEqual(p.writevs, [2], 'a write after it waits in the window again');
      io.write([encodePong(3)]);
      await turn();
      assert.deepEqual(p.writevs, [2, 3]);
      await until(p, frameBytes(answer) + frameBytes(write(0)) + 20);
      assert.deepEqual(frames(p.received), [
        [Cmd.REMOTE_IO_RES, -1],
        [Cmd.PROTECTED_WRITE, 5],
        [Cmd.PONG, -1],
      ]);
    } finally {
      p.close();
    }
  });

  it('through a Link with FRAME_CRC: sealed writes wait, a sealed PONG releases them, the CRC chain holds', async () => {
    const p = await pair();
    try {
      const link = new Link(socketIo(p.client, undefined, LONG), {
        caps: Cap.FRAME_CRC,
        heartbeatMs: 1e9,
        name: 'vm',
        onDead: () => {},
      });
      link.agree(Cap.FRAME_CRC);
      link.send(write(1));
      await turn();
      link.send(write(2));
      await turn();
      assert.equal(p.writevs.length, 0, 'sealed writes wait in the window');
      link.pong(4);
      await turn();
      assert.equal(p.writevs.length, 1);
      await until(p, 2 * (frameBytes(write(0)) + 4) + 20 + 4);
      assert.deepEqual(frames(p.received, true), [
        [Cmd.PROTECTED_WRITE, 1],
        [Cmd.PROTECTED_WRITE, 2],
        [Cmd.PONG, -1],
      ]);
      link.stop();
    } finally {
      p.close();
    }
  });

  it('without a window, frames leave at the end of their turn', async () => {
    const p = await pair();
    try {
      const io = socketIo(p.client);
      io.write(write(1));
      io.write(write(2));
      await turn();
      await turn();
      assert.deepEqual(p.writevs, [4], 'one writev for the turn');
    } finally {
      p.close();
    }
  });
});
