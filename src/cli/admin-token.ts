// The operator API's admin token on disk: the hub reads it at start (or creates the default one,
// mode 0600, under --data), and the CLI subcommands that POST read the same file. A token that
// is missing, unreadable or empty is an error, never "no authentication".
import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';

/** The hub's default token file, under its --data directory. */
export const defaultTokenFile = (dataDir: string): string => path.join(path.resolve(dataDir), 'admin-token');

/** Where the CLI looks when --admin-token-file is not given. */
export const TOKEN_FILE_ENV = 'REPHUB_ADMIN_TOKEN_FILE';
export const cliTokenFile = (given?: string): string =>
  given ?? process.env[TOKEN_FILE_ENV] ?? defaultTokenFile('./rephub-data');

const MAX_TOKEN_BYTES = 4096;

/** The token in `file` (surrounding whitespace trimmed); throws with the path if unreadable or empty. */
export function readTokenFile(file: string): string {
  let text: string;
  try {
    const st = fs.statSync(file);
    if (st.size > MAX_TOKEN_BYTES) throw new Error(`over ${MAX_TOKEN_BYTES} bytes`);
    text = fs.readFileSync(file, 'utf8');
  } catch (e) {
    throw new Error(`admin token file ${file}: ${(e as Error).message}`, { cause: e });
  }
  const token = text.trim();
  if (!token) throw new Error(`admin token file ${file} is empty`);
  if (/[\s]/.test(token)) throw new Error(`admin token file ${file}: the token must be one line without spaces`);
  return token;
}

/**
 * The hub's token: from `given`, or the default file under `dataDir`, created with 32 random
 * bytes (hex) and mode 0600 when missing. `created` says the caller should log where it is.
 */
export function hubToken(
  given: string | undefined,
  dataDir: string,
): { token: string; file: string; created: boolean } {
  if (given) return { token: readTokenFile(given), file: path.resolve(given), created: false };
  const file = defaultTokenFile(dataDir);
  try {
    // 'wx': never overwrite a token another process already handed out
    fs.writeFileSync(file, crypto.randomBytes(32).toString('hex') + '\n', { flag: 'wx', mode: 0o600 });
    return { token: readTokenFile(file), file, created: true };
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code !== 'EEXIST')
      throw new Error(`admin token file ${file}: ${(e as Error).message}`, { cause: e });
  }
  return { token: readTokenFile(file), file, created: false };
}

/** True when others than the owner may read the file: worth a warning at start. */
export function readableByOthers(file: string): boolean {
  return (fs.statSync(file).mode & 0o077) !== 0;
}
