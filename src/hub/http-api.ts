// The hub's HTTP API: GET /status, /metrics and the dashboard; POST operator actions (failover
// test, failover, failback) with a bounded JSON body; errors mapped to status codes (a refused
// action 409, a bad request 400/413, a failure 500). Every POST first passes operatorGate (the
// admin token and a JSON content type, 401/415). The WebSocket feed on /ws is the monitor's:
// it is handed the server here.
import * as crypto from 'node:crypto';
import * as http from 'node:http';
import * as net from 'node:net';
import type { Logger } from '../log';
import type { Monitor } from './monitor';

const MAX_BODY_BYTES = 65536;
const NOT_FOUND =
  'not found: GET / (dashboard), /status, /metrics, /events, /ws, /checkpoints, /history; ' +
  'POST /failover-test/start|stop, /failover, /failback, /verify, /checkpoint, /restore, /volume/pause|resume|remove|resize';

/** What the operator can ask for; the failover controller does it. */
export interface OperatorActions {
  /** `at`: a checkpoint id, a time or latest (the journal's point-in-time view). */
  startTest(opts: { vm?: string; force?: boolean; at?: string }): Promise<unknown>;
  stopTest(opts: { force?: boolean }): Promise<unknown>;
  /** `at`: promote that checkpoint of `vm` (the recovery volumes are rolled back to it). */
  failoverNow(opts: { force?: boolean; at?: string; vm?: string }): Promise<unknown>;
  failback(opts: { winner?: Side | Record<string, Side>; force?: boolean }): Promise<unknown>;
}

export interface HttpApiOptions {
  /** The /status document. */
  status(): unknown;
  monitor: Monitor;
  actions: OperatorActions;
  /** True for an action refused in the current state (409), false for a failure (500). */
  isRefusal(e: unknown): boolean;
  /** The bearer token every POST must carry (rephub --admin-token-file). */
  adminToken: string;
  log: Logger;
  /** POST /verify: start an online verify (verify-scheduler.ts); absent, the route is not served. */
  verify?: (req: { vm?: string; volume?: string; reportOnly?: boolean }) => unknown;
  /** More routes (the journal's, src/hub/journal-api.ts): GETs by path, JSON POSTs, streamed POSTs. */
  more?: MoreRoutes;
  /** GET /events: the event stream (events.ts), answered by the handler itself. */
  events?: (res: http.ServerResponse) => void;
}

export interface MoreRoutes {
  /** The GET document for `path`, or undefined when it is not one of these routes. */
  get(path: string, query: URLSearchParams): unknown;
  post: Record<string, (b: Body) => Promise<unknown>>;
  /** POSTs that write their own response (a volume's bytes). */
  stream: Record<string, (b: Body, res: http.ServerResponse) => Promise<void>>;
}

export type Body = Record<string, unknown>;

/** A request the body of which is wrong: answered 400 before any action runs. */
export class BadRequest extends Error {}

export function optionalString(b: Body, key: string): string | undefined {
  const v = b[key];
  if (v === undefined || v === null) return undefined; // JSON's way of leaving it out
  if (typeof v === 'string') return v;
  throw new BadRequest(`${key} must be a string`);
}

type Side = 'recovery' | 'protected';

/** winner: one side for every volume, or an object naming a side per volume (names checked later). */
function winnerOf(b: Body): Side | Record<string, Side> | undefined {
  const v = b.winner;
  if (v === undefined || v === null) return undefined;
  // anything else would silently mean "recovery wins" and throw the protected side's changes away
  const isSide = (x: unknown): x is Side => x === 'recovery' || x === 'protected';
  if (isSide(v)) return v;
  if (typeof v !== 'object' || Array.isArray(v))
    throw new BadRequest('winner must be "recovery", "protected" or an object of volume name -> side');
  const out: Record<string, Side> = {};
  for (const [name, side] of Object.entries(v)) {
    if (!isSide(side)) throw new BadRequest(`winner of volume ${name} must be "recovery" or "protected"`);
    out[name] = side;
  }
  return out;
}

function routes(a: OperatorActions): Record<string, (b: Body) => Promise<unknown>> {
  return {
    '/failover-test/start': (b) =>
      a.startTest({ vm: optionalString(b, 'vm'), force: !!b.force, at: optionalString(b, 'at') }),
    '/failover-test/stop': (b) => a.stopTest({ force: !!b.force }),
    '/failover': (b) => a.failoverNow({ force: !!b.force, at: optionalString(b, 'at'), vm: optionalString(b, 'vm') }),
    '/failback': (b) => a.failback({ winner: winnerOf(b), force: !!b.force }),
  };
}

const digest = (s: string): Buffer => crypto.createHash('sha256').update(s).digest();

/**
 * The one check every POST passes before its body is read: `Authorization: Bearer <token>`
 * (compared in constant time, over digests so the length leaks nothing either) and
 * `content-type: application/json`. A browser's cross-site simple request can carry neither, so
 * a web page open on the hub host cannot trigger an action. Returns the refusal, or null.
 */
export function operatorGate(
  req: http.IncomingMessage,
  tokenDigest: Buffer,
): { code: 401 | 415; error: string } | null {
  const m = /^Bearer\s+(\S+)\s*$/i.exec(req.headers.authorization ?? '');
  if (!m || !crypto.timingSafeEqual(digest(m[1]), tokenDigest))
    return {
      code: 401,
      error: 'operator actions need "Authorization: Bearer <token>" with the token of rephub --admin-token-file',
    };
  const type = (req.headers['content-type'] ?? '').split(';')[0].trim().toLowerCase();
  if (type !== 'application/json') return { code: 415, error: 'operator actions take content-type: application/json' };
  return null;
}

/** POST /verify { vm?, volume?, reportOnly? }: starts the verify and answers at once with its ids. */
function verifyRoute(verify: NonNullable<HttpApiOptions['verify']>): Record<string, (b: Body) => Promise<unknown>> {
  return {
    '/verify': async (b) => {
      const r = b.reportOnly;
      if (r !== undefined && r !== null && typeof r !== 'boolean') throw new BadRequest('reportOnly must be a boolean');
      return verify({ vm: optionalString(b, 'vm'), volume: optionalString(b, 'volume'), reportOnly: r === true });
    },
  };
}

function json(res: http.ServerResponse, code: number, v: unknown): void {
  res.writeHead(code, { 'content-type': 'application/json' });
  res.end(JSON.stringify(v, null, 1));
}

export class HttpApi {
  private server?: http.Server;
  private readonly actions: Record<string, (b: Body) => Promise<unknown>>;
  private readonly tokenDigest: Buffer;

  constructor(private readonly opts: HttpApiOptions) {
    if (!opts.adminToken) throw new Error('the operator API needs a non-empty admin token');
    this.actions = { ...routes(opts.actions), ...(opts.verify ? verifyRoute(opts.verify) : {}), ...opts.more?.post };
    this.tokenDigest = digest(opts.adminToken);
  }

  listen(host: string, port: number): Promise<net.AddressInfo> {
    const server = http.createServer((req, res) => this.handle(req, res));
    // Node closes an idle keep-alive connection after 5 s, and a client reusing it at that moment
    // (fetch keeps it 4 s, later on a loaded machine) gets "other side closed" for a request the
    // hub never read. An idle connection lives 65 s here, and clients honour the hint.
    server.keepAliveTimeout = 65_000;
    this.server = server;
    this.opts.monitor.attach(server);
    return new Promise((res, rej) => {
      server.once('error', rej);
      server.listen(port, host, () => res(server.address() as net.AddressInfo));
    });
  }

  close(): void {
    this.server?.close();
  }

  private handle(req: http.IncomingMessage, res: http.ServerResponse): void {
    const { monitor } = this.opts;
    if (req.method === 'GET' && (req.url === '/status' || req.url === '/status/')) {
      return json(res, 200, this.opts.status());
    }
    if (req.method === 'GET' && req.url === '/metrics') {
      monitor.metrics().then(
        (m) => {
          res.writeHead(200, { 'content-type': monitor.registry.contentType });
          res.end(m);
        },
        (e) => json(res, 500, { error: e.message }),
      );
      return;
    }
    if (req.method === 'GET' && req.url === '/events' && this.opts.events) return this.opts.events(res);
    if (req.method === 'GET' && (req.url === '/' || req.url === '/dashboard')) {
      res.writeHead(200, { 'content-type': 'text/html; charset=utf-8' });
      res.end(monitor.dashboard());
      return;
    }
    if (req.method !== 'GET' && req.method !== 'HEAD') {
      const refused = operatorGate(req, this.tokenDigest); // before the route: every POST, even a later one
      if (refused) {
        res.setHeader('connection', 'close'); // its body is never read
        this.opts.log.warn({ action: req.url, code: refused.code }, 'operator request refused');
        return json(res, refused.code, { error: refused.error });
      }
    }
    const url = new URL(req.url ?? '/', 'http://hub');
    let got: unknown;
    try {
      got = req.method === 'GET' ? this.opts.more?.get(url.pathname, url.searchParams) : undefined;
    } catch (e) {
      const bad = e instanceof BadRequest; // a bad query (GET /history?span=…): never a crash of the hub
      return json(res, bad ? 400 : this.opts.isRefusal(e) ? 409 : 500, { error: (e as Error).message });
    }
    if (got !== undefined) return json(res, 200, got);
    const stream = req.method === 'POST' ? this.opts.more?.stream[req.url ?? ''] : undefined;
    if (stream) return this.readBody(req, res, (body) => this.run(req.url ?? '', (b) => stream(b, res), body, res));
    const act = req.method === 'POST' ? this.actions[req.url ?? ''] : undefined;
    if (!act) return json(res, 404, { error: NOT_FOUND });
    this.readBody(req, res, (body) => this.run(req.url ?? '', act, body, res));
  }

  /** Collects a JSON object body of at most MAX_BODY_BYTES; answers 413 or 400 itself. */
  private readBody(req: http.IncomingMessage, res: http.ServerResponse, then: (b: Body) => void): void {
    const chunks: Buffer[] = [];
    let bytes = 0,
      tooLarge = false;
    req.on('data', (c: Buffer) => {
      if (tooLarge) return;
      bytes += c.length;
      if (bytes <= MAX_BODY_BYTES) return void chunks.push(c);
      tooLarge = true;
      chunks.length = 0;
      res.setHeader('connection', 'close');
      json(res, 413, { error: `body over ${MAX_BODY_BYTES} bytes` });
      res.once('finish', () => req.destroy()); // read no more of it
    });
    req.on('end', () => {
      if (tooLarge) return;
      // decoded once: a character split between two chunks stays whole
      const text = Buffer.concat(chunks).toString('utf8');
      let parsed: unknown;
      try {
        parsed = text ? JSON.parse(text) : {};
      } catch {
        return json(res, 400, { error: 'body is not JSON' });
      }
      if (typeof parsed !== 'object' || parsed === null || Array.isArray(parsed)) {
        return json(res, 400, { error: 'body is not a JSON object' });
      }
      then(parsed as Body);
    });
  }

  private run(url: string, act: (b: Body) => Promise<unknown>, body: Body, res: http.ServerResponse): void {
    let done: Promise<unknown>;
    try {
      done = act(body);
    } catch (e) {
      done = Promise.reject(e); // a bad field, found before the action started
    }
    done.then(
      (r) => (res.headersSent ? undefined : json(res, 200, r)),
      (e) => {
        const message = e instanceof Error ? e.message : String(e);
        if (res.headersSent) return void res.destroy(e as Error); // mid-stream: the client sees it cut short
        this.opts.log.error({ action: url, cause: message }, 'operator action refused');
        json(res, e instanceof BadRequest ? 400 : this.opts.isRefusal(e) ? 409 : 500, { error: message });
      },
    );
  }
}
