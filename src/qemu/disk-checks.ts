// What every disk planner shares: the image probe's answer, a tapped disk, the context the
// planners add to, and the checks on an image and a volume name. Pure, like the planners.
import * as path from 'node:path';

/** What the probe found at an image path; `format` from its header (undefined: no known header, raw). */
export interface ImageProbe {
  kind: 'missing' | 'file' | 'block' | 'other';
  format?: string;
  sizeBytes?: number;
  writable?: boolean;
  error?: string;
}
export type Probe = (image: string) => ImageProbe;

/** A disk the agent serves: its volume name (the hub's --vol), image path, and how the user wrote it. */
export interface TappedDisk {
  volume: string;
  image: string;
  what: string;
}

/** What the per-option planners share: they add disks, notes and argument edits. */
export interface PlanContext {
  args: readonly string[];
  probe: Probe;
  disks: TappedDisk[];
  notes: string[];
  edits: Map<number, (socket: string) => string>;
}

export const NAME_RE = /^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$/;
export const nbdUri = (volume: string, socket: string) => `nbd+unix:///${volume}?socket=${socket}`;

/**
 * The image must exist, be a file or block device, be writable and (raw) a whole number of
 * sectors. `given` is the drive's format=; without it the probe's header decides, as QEMU's does.
 */
export function checkImage(probe: Probe, file: string, label: string, given: string | undefined): ImageProbe {
  const p = probe(file);
  if (p.error !== undefined) throw new Error(`${label}: cannot open the image: ${p.error}`);
  if (p.kind === 'missing') throw new Error(`${label}: the image does not exist`);
  if (p.kind === 'other') throw new Error(`${label}: the image is not a regular file or block device`);
  const format = given ?? p.format ?? 'raw';
  if (format !== 'raw')
    throw new Error(
      `${label}: a writable ${format} image cannot be protected (only raw images are; ` +
        `convert it with qemu-img convert -O raw, or give it readonly=on or snapshot=on to run it unprotected)`,
    );
  if (p.writable === false) throw new Error(`${label}: the image is not writable (readonly=on runs it unprotected)`);
  const size = p.sizeBytes;
  if (size !== undefined && (size === 0 || size % 512 !== 0))
    throw new Error(`${label}: the image is ${size} bytes, not a positive multiple of 512`);
  return p;
}

/** The drive's id (or node-name), else the image's base name without its extension. */
export function volumeName(id: string | undefined, file: string, label: string): string {
  const name = id ?? path.posix.basename(file).replace(/\.[^.]*$/, '');
  if (!NAME_RE.test(name))
    throw new Error(
      `${label}: volume name "${name}" ${id !== undefined ? '' : `(from ${file}) `}must be 1-128 characters of A-Z a-z 0-9 . _ - starting with a letter or digit: give the drive an id=`,
    );
  return name;
}
