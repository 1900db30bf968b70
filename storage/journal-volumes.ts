// A VM journal's volume table (`volumes.json`: volume index -> name) and the directory sync its
// files need: the table is replaced atomically (written, synced, renamed, directory synced).
import * as fs from 'node:fs';
import * as path from 'node:path';

/** The table in `dir`, empty when there is none yet. */
export function loadVolumeTable(dir: string): string[] {
  const file = path.join(dir, 'volumes.json');
  if (!fs.existsSync(file)) return [];
  const v = JSON.parse(fs.readFileSync(file, 'utf8')).volumes;
  if (!Array.isArray(v) || !v.every((x) => typeof x === 'string')) throw new Error(`${file}: no volume table`);
  return v;
}

/** Replace the table in `dir` durably. */
export function writeVolumeTable(dir: string, names: readonly string[]): void {
  const file = path.join(dir, 'volumes.json'),
    tmp = file + '.tmp';
  const fd = fs.openSync(tmp, 'w');
  try {
    fs.writeSync(fd, JSON.stringify({ volumes: names }));
    fs.fsyncSync(fd);
  } finally {
    fs.closeSync(fd);
  }
  fs.renameSync(tmp, file);
  syncDir(dir);
}

/** fsync a directory: the names created or renamed in it are durable. */
export function syncDir(dir: string): void {
  const d = fs.openSync(dir, 'r');
  try {
    fs.fsyncSync(d);
  } finally {
    fs.closeSync(d);
  }
}
