import { readFile } from 'node:fs/promises';
import { createServer, type ServerResponse } from 'node:http';
import { join } from 'node:path';

/** A directory (a binary cache written by Hydrant's cache code) served over HTTP on loopback. */
export interface DirectoryServer {
  url: string;
  close(): Promise<void>;
}

export interface DirectoryServerHooks {
  /** Sees every request's URL as it arrives (query included). */
  seen?(url: string): void;
  /** Answers a request itself (a failure the test switches on) instead of serving the file; `body` is null for a missing file. */
  answer?(rel: string, body: Buffer | null, res: ServerResponse): boolean;
}

/** Serves `dir` at `url`: each request's path, decoded, names a file below it; a missing file is a 404. */
export async function serveDirectory(dir: string, hooks: DirectoryServerHooks = {}): Promise<DirectoryServer> {
  const server = createServer((req, res) => {
    hooks.seen?.(req.url!);
    const rel = decodeURIComponent(req.url!.slice(1).replace(/\?.*$/, ''));
    readFile(join(dir, rel)).then(
      (body) => {
        if (!hooks.answer?.(rel, body, res)) res.end(body);
      },
      () => {
        if (hooks.answer?.(rel, null, res)) return;
        res.statusCode = 404;
        res.end();
      },
    );
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  return {
    url: `http://127.0.0.1:${(server.address() as { port: number }).port}`,
    close: () => new Promise<void>((r) => server.close(() => r())),
  };
}
