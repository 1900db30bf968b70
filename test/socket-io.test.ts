// socketIo over a real loopback TCP socket: with a gather window, frames of many event-loop
// turns leave together in one writev, in order, once the window's bytes fill (or its time
// passes), and every frame's `done` runs; without one, each turn's frames leave at its end.
import { strict as assert } from 'node:assert';
import * as net from 'node:net';
import { socketIo } from '../src/link/socket-io';

interface Pair {
  client: net.Socket;
  received: Buffer[];
  writevs: number[]; // buffers per _writev/_write call on the client
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
  return { client, received, writevs, close: () => (client.destroy(), server.close()) };
}

const turn = () => new Promise<void>((r) => setImmediate(r));
const frame = (i: number, n: number) => Buffer.alloc(n, i);

describe('socketIo', () => {
  it('gathers frames of several turns into one writev when the window fills, in order, each done called', async () => {
    const p = await pair();
    try {
      const io = socketIo(p.client, undefined, { ms: 60_000, bytes: 64 << 10 });
      let done = 0;
      for (let i = 1; i <= 3; i++) {
        io.write([frame(i, 16), frame(i, 8 << 10)], () => done++);
        await turn();
      }
      await new Promise((r) => setTimeout(r, 50));
      assert.equal(p.writevs.length, 0, 'nothing leaves before the window fills or its time passes');
      assert.equal(p.received.length, 0);
      assert.equal(io.queuedBytes(), 3 * (16 + (8 << 10)), 'held frames count as queued (the mirror limits on it)');
      io.write([frame(4, 16), frame(4, 48 << 10)], () => done++); // over 64 KiB held: out at the end of the turn
      assert.equal(p.writevs.length, 0, 'not inside the write that filled the window');
      await turn();
      assert.deepEqual(p.writevs, [8], 'the four frames in one writev');
      const total = 4 * 16 + 3 * (8 << 10) + (48 << 10);
      while (Buffer.concat(p.received).length < total) await new Promise((r) => setTimeout(r, 5));
      const got = Buffer.concat(p.received);
      let o = 0;
      for (const [i, n] of [1, 2, 3, 4].map((i) => [i, i === 4 ? 48 << 10 : 8 << 10])) {
        assert.ok(
          got.subarray(o, o + 16 + n).every((b) => b === i),
          `frame ${i} whole and in order`,
        );
        o += 16 + n;
      }
      while (done < 4) await turn();
    } finally {
      p.close();
    }
  });

  it('releases a batch under the size limit once its time passes, and re-arms the timer for the next batch', async () => {
    const p = await pair();
    try {
      const io = socketIo(p.client, undefined, { ms: 5, bytes: 1 << 20 });
      for (const i of [1, 2]) {
        io.write([frame(i, 100)]);
        await turn();
        io.write([frame(i + 10, 100)]);
        while (Buffer.concat(p.received).length < i * 200) await new Promise((r) => setTimeout(r, 2));
      }
      // (how the frames split between writevs depends on the turns' timing: not asserted)
      assert.equal(
        p.writevs.reduce((a, b) => a + b, 0),
        4,
        'each frame written once',
      );
      const got = Buffer.concat(p.received);
      assert.deepEqual([got[0], got[100], got[200], got[300]], [1, 11, 2, 12]);
    } finally {
      p.close();
    }
  });

  it('without a window, frames leave at the end of their turn', async () => {
    const p = await pair();
    try {
      const io = socketIo(p.client);
      io.write([frame(1, 10)]);
      io.write([frame(2, 10)]);
      await turn();
      await turn();
      assert.deepEqual(p.writevs, [2], 'one writev for the turn');
    } finally {
      p.close();
    }
  });
});
