// The package's version, for --version and anything else that reports it. Read at run time from
// the package.json that ships beside dist/ (dist/src/cli/ is three levels below it), so a checkout
// and an installed package both report their own, and no build step has to stamp it.
import * as fs from 'node:fs';
import * as path from 'node:path';

function readVersion(): string {
  const file = path.join(__dirname, '..', '..', '..', 'package.json');
  try {
    const v = (JSON.parse(fs.readFileSync(file, 'utf8')) as { version?: unknown }).version;
    return typeof v === 'string' ? v : 'unknown';
  } catch {
    return 'unknown'; // --version must never be what stops a daemon from starting
  }
}

/** The version in package.json, or "unknown" when that file is missing or unreadable. */
export const VERSION = readVersion();
