# Sourced by the benchmarks: `binflags FILE` prints the Node flags a built bin's first line starts
# it with (`#!/usr/bin/env -S node FLAGS`; none for a plain `#!/usr/bin/env node`), so that a
# script running `node FILE` measures what the installed command runs (src/cli/heap-flags.ts).
binflags() { sed -n '1s|^#!/usr/bin/env -S node *||p' "$1"; }
