// The volume operations on the hub's HTTP API: POST /volume/pause, /volume/resume,
// /volume/remove and /volume/resize, each with {"volume": NAME}. Like every POST they pass the operator gate
// first (admin token, JSON; http-api.ts); an unknown volume or a wrong state is a VolumeRefused
// (409), logged with the volume and the cause by the API.
import { BadRequest, Body, MoreRoutes, optionalString } from './http-api';
import { VolumeHost, removeVolume } from './volume-set';
import { pauseVolume, resumeVolume } from './volume-ops';
import { resizeVolume } from './volume-resize';

function volumeOf(b: Body): string {
  const v = optionalString(b, 'volume');
  if (!v) throw new BadRequest('volume is required');
  return v;
}

export function volumeRoutes(hub: VolumeHost): MoreRoutes {
  return {
    get: () => undefined,
    post: {
      '/volume/pause': (b) => pauseVolume(hub, volumeOf(b)),
      '/volume/resume': (b) => resumeVolume(hub, volumeOf(b)),
      '/volume/remove': (b) => removeVolume(hub, volumeOf(b)),
      '/volume/resize': (b) => resizeVolume(hub, volumeOf(b)),
    },
    stream: {},
  };
}

/** Several route sets as one (the first that answers a GET wins). */
export function mergeRoutes(...sets: (MoreRoutes | undefined)[]): MoreRoutes {
  const all = sets.filter((s): s is MoreRoutes => s !== undefined);
  return {
    get: (path, query) => {
      for (const s of all) {
        const got = s.get(path, query);
        if (got !== undefined) return got;
      }
      return undefined;
    },
    post: Object.assign({}, ...all.map((s) => s.post)),
    stream: Object.assign({}, ...all.map((s) => s.stream)),
  };
}
