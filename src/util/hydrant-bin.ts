import { readFileSync, realpathSync } from 'node:fs';
import { fileURLToPath } from 'node:url';

/**
 * The `hydrant` command's entry (runs src/cli/main.ts compiled, or through tsx).
 * Compiled, this module runs from dist/<key>/src/util/, where bin/ is a link
 * back to the checkout's: the real path is the one children are started with.
 */
export const HYDRANT_BIN = realpathSync(fileURLToPath(new URL('../../bin/hydrant.js', import.meta.url)));

/**
 * The Node flags on the entry's `#!/usr/bin/env -S node …` line. The
 * daemons run with them (docs/ARCHITECTURE.md, "Node flags"); a process
 * started as `node bin/hydrant.js` would miss them, so children are started
 * through hydrantArgv instead.
 */
export const HYDRANT_NODE_FLAGS: readonly string[] = Object.freeze(shebangFlags(readFileSync(HYDRANT_BIN, 'utf8')));

export function shebangFlags(source: string): string[] {
  const first = source.slice(0, source.indexOf('\n'));
  const m = /^#!\/usr\/bin\/env -S node((?: --[\w-]+(?:=\S+)?)*)\s*$/.exec(first);
  if (!m) throw new Error(`${HYDRANT_BIN}: expected a "#!/usr/bin/env -S node --flag…" line, found ${JSON.stringify(first)}`);
  return m[1]!.split(' ').filter(Boolean);
}

/** process.execPath's arguments for `hydrant ...args`: the entry's Node flags, then `extra` (later flags win), then the entry. */
export function hydrantArgv(args: readonly string[], extra: readonly string[] = []): string[] {
  return [...HYDRANT_NODE_FLAGS, ...extra, HYDRANT_BIN, ...args];
}
