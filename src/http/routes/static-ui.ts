import { readFile, readdir } from 'node:fs/promises';
import { createRequire } from 'node:module';
import { extname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { HttpError } from '../../errors/index.ts';
import type { Handler } from '../router.ts';

const UI_DIR = fileURLToPath(new URL('../../ui/', import.meta.url));

/**
 * Files of installed packages the page imports, by the name it asks for: a
 * fixed mapping (nothing else of node_modules is reachable). comlink's ES
 * module build carries calls between the page and its layout worker.
 */
const PACKAGE_FILES: Record<string, string> = {
  'comlink.mjs': 'comlink/dist/esm/comlink.mjs',
};

const TYPES: Record<string, string> = {
  '.html': 'text/html; charset=utf-8',
  '.js': 'text/javascript; charset=utf-8',
  '.css': 'text/css; charset=utf-8',
  '.svg': 'image/svg+xml',
  '.json': 'application/json; charset=utf-8',
};

/**
 * The visualizer's files (src/ui), served as they are: no build step, no
 * external network. Only files present at start, and the PACKAGE_FILES, are
 * served (no path from the request ever reaches the filesystem).
 */
export async function staticUi(): Promise<Handler> {
  const files = new Map<string, { path: string; type: string }>();
  for (const name of await readdir(UI_DIR).catch(() => [] as string[])) {
    const type = TYPES[extname(name)];
    if (type) files.set(name, { path: join(UI_DIR, name), type });
  }
  // Resolved from this module, so any install location (a checkout, a global or nested node_modules) works.
  const require = createRequire(import.meta.url);
  for (const [name, spec] of Object.entries(PACKAGE_FILES)) files.set(name, { path: require.resolve(spec), type: TYPES['.js']! });
  return async (req, res) => {
    const name = req.params.file ?? 'index.html';
    const f = files.get(name);
    if (!f) throw new HttpError(404, `no such file: ${name}`);
    const body = await readFile(f.path);
    res.writeHead(200, { 'content-type': f.type, 'content-length': body.length, 'cache-control': 'no-cache' });
    res.end(body);
    return undefined;
  };
}
