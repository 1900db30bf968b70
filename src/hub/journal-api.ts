// The journal's routes on the hub's HTTP API: GET /checkpoints[?vm=] lists the points, POST
// /checkpoint {vm, label} tags the next consistent point, POST /restore {vm, volume, at} answers
// the volume's bytes as of that point (application/octet-stream, content-length the volume's
// size, x-rephub-checkpoint the point). POST /restore-export {vm, volume, at} serves that view
// over NBD instead ({name, uri, size, checkpoint}; restore-export.ts) and POST
// /restore-export/end {name} ends it. Every POST passes the operator gate first (http-api.ts).
import type * as http from 'node:http';
import { BadRequest, Body, MoreRoutes, optionalString } from './http-api';
import type { HubJournals } from './journal';
import { iso } from './journal';
import type { RestoreExports } from './restore-export';

const CHUNK_BYTES = 4 << 20;
const READ_AHEAD = 4; // chunks read ahead of the socket: 16 MiB at most per restore
const TAG_WAIT_MS = 2000; // a tag waiting for the agent's POINT (SPEC.md 7.4) is answered with its point

function required(b: Body, key: string): string {
  const v = optionalString(b, key);
  if (!v) throw new BadRequest(`${key} is required`);
  return v;
}

/** Write the volume as of the point to `res`, a chunk at a time, waiting for the socket to drain. */
async function restore(journals: HubJournals, b: Body, res: http.ServerResponse): Promise<void> {
  const vm = required(b, 'vm'),
    volume = required(b, 'volume'),
    at = optionalString(b, 'at') ?? 'latest';
  const cp = journals.resolve(vm, at);
  const view = journals.view(vm, volume, cp);
  try {
    const size = view.sizeBytes;
    res.writeHead(200, {
      'content-type': 'application/octet-stream',
      'content-length': String(size),
      'x-rephub-checkpoint': JSON.stringify({ id: cp.id, time: iso(cp.time), kind: cp.kind, label: cp.label }),
    });
    // Reads run ahead of the socket (READ_AHEAD chunks), in order: the disk and the link overlap.
    const inFlight: Promise<Buffer>[] = [];
    let next = 0;
    const issue = () => {
      const off = next,
        buf = Buffer.allocUnsafe(Math.min(CHUNK_BYTES, size - off));
      next += buf.length;
      inFlight.push(view.read(buf, off).then(() => buf));
    };
    for (let sent = 0; sent < size;) {
      while (inFlight.length < READ_AHEAD && next < size) issue();
      const buf = await inFlight.shift()!;
      if (res.destroyed) throw new Error(`restore of ${volume}: the client went away at offset ${sent}`);
      sent += buf.length;
      if (!res.write(buf)) await drained(res);
    }
    await Promise.allSettled(inFlight);
    res.end();
  } finally {
    await view.close();
  }
}

/** The socket drained, or closed (one listener of each at a time: they are removed after). */
function drained(res: http.ServerResponse): Promise<void> {
  return new Promise<void>((r) => {
    const done = () => {
      res.off('drain', done).off('close', done);
      r();
    };
    res.on('drain', done).on('close', done);
  });
}

export function journalRoutes(journals: HubJournals, restores?: RestoreExports): MoreRoutes {
  const post: MoreRoutes['post'] = {
    '/checkpoint': async (b) => journals.tagSoon(required(b, 'vm'), required(b, 'label'), TAG_WAIT_MS),
  };
  if (restores) {
    post['/restore-export'] = async (b) =>
      restores.start(required(b, 'vm'), required(b, 'volume'), optionalString(b, 'at') ?? 'latest');
    post['/restore-export/end'] = (b) => restores.end(required(b, 'name'));
  }
  return {
    get: (path, query) => (path === '/checkpoints' ? journals.list(query.get('vm') ?? undefined) : undefined),
    post,
    stream: {
      '/restore': (b, res) => restore(journals, b, res),
    },
  };
}
