// The hub's HTTP API on its own, over a fake status source and fake operator actions: routes,
// the body checks (a non-object body or a bad field is a 400 before any action runs), the body
// limit (413), the mapping of a refused action to 409 and a failure to 500, and the operator
// gate: no token or a wrong one is 401, a content type other than JSON 415, and nothing runs.
import { strict as assert } from 'node:assert';
import * as http from 'node:http';
import { HttpApi, OperatorActions } from '../src/hub/http-api';
import { Monitor, HubStatusSource } from '../src/hub/monitor';
import { silentLogger } from '../src/log';

class Refused extends Error {}

const TOKEN = 'sesame-0123456789abcdef';
const GOOD = { authorization: `Bearer ${TOKEN}`, 'content-type': 'application/json' };

function post(
  port: number,
  url: string,
  body: string | Buffer,
  headers: http.OutgoingHttpHeaders = GOOD,
): Promise<{ status: number; body: any }> {
  return new Promise((resolve, reject) => {
    const req = http.request({ host: '127.0.0.1', port, path: url, method: 'POST', headers }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c) => chunks.push(c));
      res.on('end', () => resolve({ status: res.statusCode!, body: JSON.parse(Buffer.concat(chunks).toString()) }));
    });
    req.on('error', reject);
    req.end(body);
  });
}

describe('hub HTTP API (http-api.ts)', () => {
  const calls: unknown[] = [];
  const source: HubStatusSource = {
    status: () => ({ volumes: [], failover: null }),
    sessionsConnected: () => 3,
    receivedBytes: () => 12345,
    heat: () => ({}),
  };
  const actions: OperatorActions = {
    startTest: async (o) => {
      calls.push(['startTest', o]);
      return { volumes: [] };
    },
    stopTest: async () => {
      throw new Refused('no failover test is running');
    },
    failoverNow: async () => {
      throw new Error('disk on fire');
    },
    failback: async (o) => {
      calls.push(['failback', o]);
      return { volumes: [] };
    },
  };
  const monitor = new Monitor(source);
  const api = new HttpApi({
    status: () => source.status(),
    monitor,
    actions,
    isRefusal: (e) => e instanceof Refused,
    adminToken: TOKEN,
    log: silentLogger(),
  });
  let port = 0;
  before(async () => {
    port = (await api.listen('127.0.0.1', 0)).port;
  });
  after(() => {
    api.close();
    monitor.close();
  });
  beforeEach(() => {
    calls.length = 0;
  });

  it('serves /status, /metrics from the status source, the dashboard, and 404 elsewhere', async () => {
    const base = `http://127.0.0.1:${port}`;
    assert.deepEqual(await (await fetch(`${base}/status`)).json(), { volumes: [], failover: null });
    const metrics = await (await fetch(`${base}/metrics`)).text();
    assert.match(metrics, /^rephub_agents_connected 3$/m);
    assert.match(metrics, /^rephub_received_bytes_total 12345$/m);
    assert.match(await (await fetch(`${base}/`)).text(), /<title>rephub<\/title>/);
    assert.equal((await fetch(`${base}/nowhere`)).status, 404);
    assert.equal((await fetch(`${base}/failover`)).status, 404, 'actions are POST only');
  });

  it('runs an action with the body fields it takes; a refusal is 409, a failure 500', async () => {
    const started = await post(port, '/failover-test/start', JSON.stringify({ vm: 'vm1', force: 1 }));
    assert.equal(started.status, 200);
    assert.deepEqual(calls, [['startTest', { vm: 'vm1', force: true, at: undefined }]]);
    assert.equal((await post(port, '/failover-test/start', '')).status, 200, 'an empty body is {}');
    assert.equal((await post(port, '/failover-test/start', '{"vm":null}')).status, 200, 'null leaves a field out');
    assert.deepEqual(calls.at(-1), ['startTest', { vm: undefined, force: false, at: undefined }]);
    assert.equal((await post(port, '/failover-test/start', '{"at":"10 min ago"}')).status, 200);
    assert.deepEqual(calls.at(-1), ['startTest', { vm: undefined, force: false, at: '10 min ago' }]);
    assert.equal((await post(port, '/failover-test/start', '{"at":7}')).status, 400, 'at is a string');
    const refused = await post(port, '/failover-test/stop', '{}');
    assert.deepEqual(refused, { status: 409, body: { error: 'no failover test is running' } });
    assert.deepEqual(await post(port, '/failover', '{}'), { status: 500, body: { error: 'disk on fire' } });
    assert.equal((await post(port, '/failback', '{"winner":"protected"}')).status, 200);
    assert.deepEqual(calls.at(-1), ['failback', { winner: 'protected', force: false }]);
    assert.equal(
      (await post(port, '/failback', '{"winner":{"V1":"recovery","V2":"protected"},"force":true}')).status,
      200,
    );
    assert.deepEqual(calls.at(-1), ['failback', { winner: { V1: 'recovery', V2: 'protected' }, force: true }]);
    assert.equal((await post(port, '/failback', '{"winner":{"V1":"left"}}')).status, 400, 'an unknown side per volume');
  });

  it('refuses a body that is not a JSON object, or a bad field, with 400 and runs nothing', async () => {
    for (const body of ['null', '[1]', '7', '"x"', 'not json']) {
      assert.equal((await post(port, '/failback', body)).status, 400, body);
    }
    assert.equal((await post(port, '/failback', '{"winner":"nobody"}')).status, 400, 'an unknown winner');
    assert.equal((await post(port, '/failover-test/start', '{"vm":7}')).status, 400, 'a vm that is not a name');
    assert.deepEqual(calls, []);
  });

  it('answers 413 to a body over 64 KiB and runs nothing', async () => {
    const r = await post(port, '/failover-test/start', Buffer.alloc(65537, 0x20));
    assert.equal(r.status, 413);
    assert.deepEqual(calls, []);
  });

  it('keeps a character split across body chunks whole', async () => {
    const vm = 'é'.repeat(40000); // 80000 bytes of two-byte characters: several chunks
    assert.equal((await post(port, '/failover-test/start', JSON.stringify({ vm }))).status, 413);
    const small = 'vm-é-' + 'ü'.repeat(20000);
    assert.equal((await post(port, '/failover-test/start', JSON.stringify({ vm: small }))).status, 200);
    assert.deepEqual(calls, [['startTest', { vm: small, force: false, at: undefined }]]);
  });

  it('refuses a POST without the admin token (401) or without a JSON content type (415), and runs nothing', async () => {
    const json = { 'content-type': 'application/json' };
    const cases: [http.OutgoingHttpHeaders, number][] = [
      [json, 401],
      [{ ...json, authorization: 'Bearer wrong' }, 401],
      [{ ...json, authorization: `Bearer ${TOKEN}x` }, 401],
      [{ ...json, authorization: TOKEN }, 401], // not a bearer credential
      [{ ...json, authorization: `Basic ${TOKEN}` }, 401],
      [{ authorization: `Bearer ${TOKEN}` }, 415],
      [{ authorization: `Bearer ${TOKEN}`, 'content-type': 'text/plain' }, 415],
      [{ authorization: `Bearer ${TOKEN}`, 'content-type': 'application/x-www-form-urlencoded' }, 415],
      [{}, 401], // what a cross-site form post carries
    ];
    for (const [headers, code] of cases) {
      for (const url of ['/failover-test/start', '/failback', '/failover', '/no-such-action']) {
        const r = await post(port, url, '{}', headers);
        assert.equal(r.status, code, `${url} ${JSON.stringify(headers)}`);
        assert.equal(typeof r.body.error, 'string');
      }
    }
    assert.deepEqual(calls, []);
    const ok = await post(port, '/failover-test/start', '{}', {
      authorization: `bearer  ${TOKEN}`,
      'content-type': 'Application/JSON; charset=utf-8',
    });
    assert.equal(ok.status, 200, 'scheme and media type are case-insensitive, parameters allowed');
    assert.equal((await fetch(`http://127.0.0.1:${port}/status`)).status, 200, 'GET stays open');
  });
});
