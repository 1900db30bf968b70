// The daemons' exit codes (rephub serve, rephub-agent run), one table for both, shown in --help
// and the README. Operator subcommands keep their own documented codes (verify: 0, 1, 2).
import type { Command } from 'commander';

/** Stopped by SIGINT/SIGTERM with everything saved and handed over. */
export const EXIT_OK = 0;
/** Failed while running, or a stop that lost something: a save failed, the agent's drain timed out. */
export const EXIT_RUNTIME = 1;
/** Bad arguments or config (flag, key, path, key file): nothing was started. `config check` too. */
export const EXIT_USAGE = 2;
/** Could not start: a lock held by another process, an address in use, state that would not open. */
export const EXIT_START = 3;

export const EXIT_CODES_HELP = `
Exit codes: ${EXIT_OK} stopped cleanly (SIGINT/SIGTERM); ${EXIT_RUNTIME} failed while running, or stopped with an
error (a save failed, the drain timed out); ${EXIT_USAGE} bad arguments or config file (each problem is one line naming
the flag, or the key and the file); ${EXIT_START} could not start (a lock held, an address in use).`;

/** Commander's own usage errors (unknown option, missing value) exit EXIT_USAGE, not its default 1. */
export function usageErrorsExit2(program: Command): Command {
  return program.exitOverride((err) => {
    process.exit(err.exitCode === 0 ? 0 : EXIT_USAGE);
  });
}

/** An error that ends the daemon with `exitCode`; its message may hold several lines, one per problem. */
export class ExitError extends Error {
  constructor(
    message: string,
    readonly exitCode: number,
  ) {
    super(message);
  }
}

/** Prints `e` (each line prefixed with the program's name) and exits with its code, else `fallback`. */
export function exitWith(program: string, e: Error, fallback: number): never {
  for (const line of e.message.split('\n')) process.stderr.write(`${program}: ${line}\n`);
  process.exit(e instanceof ExitError ? e.exitCode : fallback);
}
