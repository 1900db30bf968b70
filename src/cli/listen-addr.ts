// Where a CLI listens: HOST:PORT (TCP) or unix:/PATH (a UNIX socket, e.g. the NBD export that
// rephub-qemu hands to QEMU as nbd+unix:///V1?socket=/PATH). Owns only the parsing.
import { parseHostPort, checkPath } from './args';

export type ListenAddr = { kind: 'tcp'; host: string; port: number } | { kind: 'unix'; path: string };

/** Linux's sun_path holds 108 bytes with the terminating NUL. */
export const UNIX_PATH_MAX = 107;

export function parseListenAddr(v: string, opt: string): ListenAddr {
  if (!v.startsWith('unix:')) return { kind: 'tcp', ...parseHostPort(v, opt) };
  const p = checkPath(v.slice('unix:'.length), opt);
  if (!p.startsWith('/')) throw new Error(`${opt}: expected unix:/ABSOLUTE/PATH, got "${v}"`);
  if (Buffer.byteLength(p) > UNIX_PATH_MAX)
    throw new Error(`${opt}: UNIX socket path is ${Buffer.byteLength(p)} bytes, at most ${UNIX_PATH_MAX}: "${p}"`);
  return { kind: 'unix', path: p };
}
