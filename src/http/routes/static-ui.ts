import { readFile, readdir } from 'node:fs/promises';
import { extname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { HttpError } from '../../errors/index.ts';
import type { Handler } from '../router.ts';

const UI_DIR = fileURLToPath(new URL('../../ui/', import.meta.url));

const TYPES: Record<string, string> = {
  '.html': 'text/html; charset=utf-8',
  '.js': 'text/javascript; charset=utf-8',
  '.css': 'text/css; charset=utf-8',
  '.svg': 'image/svg+xml',
  '.json': 'application/json; charset=utf-8',
};

/**
 * The visualizer's files (src/ui), served as they are: no build step, no
 * external network. Only files present at start are served (no path from the
 * request ever reaches the filesystem).
 */
export async function staticUi(): Promise<Handler> {
  const files = new Map<string, { path: string; type: string }>();
  for (const name of await readdir(UI_DIR).catch(() => [] as string[])) {
    const type = TYPES[extname(name)];
    if (type) files.set(name, { path: join(UI_DIR, name), type });
  }
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
