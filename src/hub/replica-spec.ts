// What a recovery volume is (its name, path and VM binding) and how it is opened: files
// synchronously, RBD images (rbd-target.ts) asynchronously.
import * as fs from 'node:fs';
import { BlockTarget, BufferHolds, FileVolume } from '../../storage/volume';

export interface ReplicaSpec {
  name: string; // protected volume name the agent reports (V1)
  path: string; // recovery volume file or device (V1R)
  vm?: string; // only this VM (authenticated identity) may protect it
}

/** Opens a recovery volume; files open synchronously, RBD images (rbd-target.ts) asynchronously. */
export type TargetOpener = (
  path: string,
  sizeBytes: number,
  holds?: BufferHolds, // the hub's buffer pool: a direct write keeps its payload until it lands
) => BlockTarget | Promise<BlockTarget>;
export const openFileTarget: TargetOpener = (path, sizeBytes) =>
  FileVolume.open(path, { createSize: sizeBytes, minSize: sizeBytes });
/** --cache none: large aligned writes bypass the page cache (O_DIRECT), several in flight. */
export const openDirectTarget: TargetOpener = (path, sizeBytes, holds) =>
  FileVolume.open(path, { createSize: sizeBytes, minSize: sizeBytes, direct: true, holds });

/** A recovery file grows to `sizeBytes` (sparse) for an online resize; a device must be that large already. */
export function growRecoveryFile(path: string, sizeBytes: number): void {
  const fd = fs.openSync(path, 'r+');
  try {
    const st = fs.fstatSync(fd);
    if (st.isFile() && st.size < sizeBytes) fs.ftruncateSync(fd, sizeBytes);
  } finally {
    fs.closeSync(fd);
  }
}
