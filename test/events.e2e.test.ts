// `rephub events` against a real hub and agent: a session connects, the volume goes to
// protecting, the agent is killed and the session's end is seen; and the bus's bound: a
// subscriber that does not read is dropped with a final line, never held in memory.
import { strict as assert } from 'node:assert';
import * as path from 'node:path';
import { spawn, ChildProcess } from 'node:child_process';
import { v1Hub, HubProcess, CLI } from './harness/hub-process';
import { v1Agent, AgentProcess } from './harness/agent-process';
import { tmpdir, makeImage, waitFor, MiB } from './harness/util';
import { EventBus, EventSink } from '../src/hub/events';
import { eventText } from '../src/cli/events-command';

describe('rephub events (e2e)', function () {
  this.timeout(120_000);
  let hub: HubProcess, agent: AgentProcess, cli: ChildProcess | undefined;
  after(async () => {
    cli?.kill();
    await agent?.stop();
    await hub?.stop();
  });

  it('streams session connect, the volume reaching protecting, and the disconnect', async () => {
    const dir = tmpdir();
    const img = path.join(dir, 'v1.img');
    makeImage(img, 8 * MiB, 0.5);
    hub = v1Hub(dir, path.join(dir, 'v1r.img'));
    await hub.start();
    cli = spawn(process.execPath, [CLI, 'events', '--hub', `http://${hub.http}`, '--json'], { stdio: 'pipe' });
    const lines: any[] = [];
    let buf = '';
    cli.stdout!.on('data', (d) => {
      buf += d;
      for (let nl; (nl = buf.indexOf('\n')) >= 0; buf = buf.slice(nl + 1)) lines.push(JSON.parse(buf.slice(0, nl)));
    });
    await waitFor('exists lines', () => lines.some((e) => e.action === 'exists' && e.object === 'stream'), 15_000);
    assert.ok(lines.some((e) => e.action === 'exists' && e.object === 'volume' && e.name === 'V1'));
    agent = v1Agent(dir, img, hub.port);
    await agent.start();
    const connect = await waitFor('session create', () =>
      lines.find((e) => e.action === 'create' && e.object === 'session' && e.vm === 'vm1'),
    );
    const prot = await waitFor('volume protecting', () =>
      lines.find((e) => e.action === 'change' && e.object === 'volume' && e.name === 'V1' && e.to === 'protecting'),
    );
    assert.equal(prot.vm, 'vm1');
    assert.ok(prot.seq > connect.seq, 'in order');
    assert.match(eventText(prot), /^change volume vm=vm1 name=V1 state:\w+->protecting$/);
    await agent.kill9();
    const gone = await waitFor('session destroy', () =>
      lines.find((e) => e.action === 'destroy' && e.object === 'session' && e.session === connect.session),
    );
    assert.ok(gone.seq > prot.seq);
    await waitFor('volume degraded', () => lines.find((e) => e.object === 'volume' && e.to === 'degraded'));
  });

  it('drops a subscriber that stops reading, with a final line, and keeps serving the others', () => {
    const bus = new EventBus(4096, 4);
    const slow = { lines: [] as string[], ended: '', unreadBytes: 0 };
    const sink = (s: typeof slow, reads: boolean): EventSink => ({
      write: (l) => {
        s.lines.push(l);
        if (!reads) s.unreadBytes += l.length;
      },
      get unreadBytes() {
        return s.unreadBytes;
      },
      end: (l) => void (s.ended = l),
    });
    const fast = { lines: [] as string[], ended: '', unreadBytes: 0 };
    assert.ok(bus.subscribe(sink(slow, false), []));
    assert.ok(bus.subscribe(sink(fast, true), []));
    for (let i = 0; i < 1000; i++) bus.publish('change', 'volume', { name: 'V1', from: 'a', to: 'b' });
    assert.match(slow.ended, /"action":"destroy","object":"stream","reason":"slow subscriber/);
    assert.ok(slow.unreadBytes <= 4096, 'never over its limit');
    assert.equal(fast.lines.length, 1001);
    assert.equal(bus.subscribers, 1);
    for (let i = 0; i < 3; i++) assert.ok(bus.subscribe(sink({ lines: [], ended: '', unreadBytes: 0 }, true), []));
    assert.equal(bus.subscribe(sink({ lines: [], ended: '', unreadBytes: 0 }, true), []), null, 'at most 4');
  });
});
