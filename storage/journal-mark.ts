// The journal's open mark: one small file per VM journal saying which boot of the machine has it
// open, and whether it was closed cleanly. A before-image is a page-cache write synced only at
// group commit, while the kernel may write back the volume page it protects first; a kill -9
// loses nothing (the page cache survives it), but a power cut or an OS crash may leave an
// overwrite on disk without its before-image. So a journal that was open (not closed cleanly)
// under another boot than this one cannot prove any of its points: the hub drops them all.
import * as fs from 'node:fs';
import * as path from 'node:path';

const MARK_FILE = 'open.json';
const BOOT_ID_FILE = '/proc/sys/kernel/random/boot_id';

/** This boot of the machine: the kernel's random boot id (`file` can stand in for it in tests). */
export function currentBootId(file = BOOT_ID_FILE): string {
  return fs.readFileSync(file, 'utf8').trim();
}

export interface MarkCheck {
  /** The journal was open, not closed cleanly, under another boot: its points cannot be proven. */
  powerLoss: boolean;
  /** The boot the journal was last open under (null: never marked). */
  recordedBootId: string | null;
}

/** Read the mark of the journal in `dir` against this boot. */
export function checkMark(dir: string, bootId: string): MarkCheck {
  const file = path.join(dir, MARK_FILE);
  let m: { bootId?: unknown; clean?: unknown };
  try {
    m = JSON.parse(fs.readFileSync(file, 'utf8'));
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return { powerLoss: false, recordedBootId: null };
    // A mark torn by the cut itself (it is rewritten with rename, so only a disk fault does it).
    return { powerLoss: true, recordedBootId: null };
  }
  const recorded = typeof m.bootId === 'string' ? m.bootId : null;
  return { powerLoss: m.clean !== true && recorded !== bootId, recordedBootId: recorded };
}

/**
 * Write the mark durably (temp file, fsync, rename, directory fsync). `clean: false` before the
 * first append of a run; `clean: true` only after every record is durable (Journal.close).
 */
export function writeMark(dir: string, bootId: string, clean: boolean): void {
  const file = path.join(dir, MARK_FILE),
    tmp = file + '.tmp';
  const fd = fs.openSync(tmp, 'w');
  try {
    fs.writeSync(fd, JSON.stringify({ bootId, clean, at: new Date().toISOString() }));
    fs.fsyncSync(fd);
  } finally {
    fs.closeSync(fd);
  }
  fs.renameSync(tmp, file);
  const d = fs.openSync(dir, 'r');
  try {
    fs.fsyncSync(d);
  } finally {
    fs.closeSync(d);
  }
}
