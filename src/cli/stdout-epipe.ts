// `rephub status | head`: once the reader is gone, a write to stdout fails with EPIPE (node
// ignores SIGPIPE), which would crash the CLI with a stack trace. Every subcommand that prints
// ends quietly instead, with status 0, as `yes | head` does for the reader's sake.
export function quietOnEpipe(): void {
  process.stdout.on('error', (e: NodeJS.ErrnoException) => {
    if (e.code === 'EPIPE') process.exit(0);
    throw e;
  });
}
