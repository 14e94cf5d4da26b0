import type { IncomingMessage, ServerResponse } from 'node:http';
import { HttpError } from '../errors/index.ts';

export interface Request {
  readonly method: string;
  readonly url: URL;
  readonly params: Readonly<Record<string, string>>;
  readonly raw: IncomingMessage;
}

/** A handler returns a JSON value, or writes the response itself and returns undefined. */
export type Handler = (req: Request, res: ServerResponse) => unknown | Promise<unknown>;

interface Route {
  readonly method: string;
  readonly pattern: RegExp;
  readonly names: readonly string[];
  readonly handler: Handler;
  readonly write: boolean;
}

/** Bodies larger than this are refused: the API takes small JSON documents only. */
const MAX_BODY = 1024 * 1024;

/**
 * Method + path routing with `:name` segments. Routes marked `write` go
 * through the write guard (a token check) before their handler runs.
 */
export class Router {
  private readonly routes: Route[] = [];

  constructor(private readonly writeGuard: (req: IncomingMessage) => void) {}

  get(path: string, handler: Handler): this {
    return this.add('GET', path, handler, false);
  }

  put(path: string, handler: Handler): this {
    return this.add('PUT', path, handler, true);
  }

  private add(method: string, path: string, handler: Handler, write: boolean): this {
    const names: string[] = [];
    const pattern = new RegExp(`^${path.replace(/:([a-zA-Z]+)/g, (_, n: string) => (names.push(n), '([^/]+)'))}/?$`);
    this.routes.push({ method, pattern, names, handler, write });
    return this;
  }

  async handle(raw: IncomingMessage, res: ServerResponse): Promise<void> {
    try {
      const url = new URL(raw.url ?? '/', 'http://localhost');
      let allowed = false;
      for (const r of this.routes) {
        const m = r.pattern.exec(url.pathname);
        if (!m) continue;
        allowed = true;
        if (r.method !== raw.method && !(r.method === 'GET' && raw.method === 'HEAD')) continue;
        if (r.write) this.writeGuard(raw);
        const params = Object.fromEntries(r.names.map((n, i) => [n, decodeURIComponent(m[i + 1]!)]));
        const body = await r.handler({ method: raw.method!, url, params, raw }, res);
        if (body !== undefined && !res.headersSent) sendJson(res, 200, body);
        return;
      }
      throw new HttpError(allowed ? 405 : 404, allowed ? `${raw.method} is not allowed here` : `no such endpoint: ${url.pathname}`);
    } catch (err) {
      if (res.headersSent) return void res.destroy();
      if (err instanceof HttpError) sendJson(res, err.status, { error: err.message });
      else sendJson(res, 500, { error: 'internal error' });
      if (!(err instanceof HttpError)) throw err;
    }
  }
}

export function sendJson(res: ServerResponse, status: number, body: unknown): void {
  const text = JSON.stringify(body);
  res.writeHead(status, { 'content-type': 'application/json; charset=utf-8', 'content-length': Buffer.byteLength(text), 'cache-control': 'no-store' });
  res.end(text);
}

/** Reads a JSON request body (bounded); one HttpError 400 for anything else. */
export async function readJson(req: IncomingMessage): Promise<unknown> {
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const c of req) {
    size += (c as Buffer).length;
    if (size > MAX_BODY) throw new HttpError(413, `request body over ${MAX_BODY} bytes`);
    chunks.push(c as Buffer);
  }
  try {
    return JSON.parse(Buffer.concat(chunks).toString('utf8'));
  } catch {
    throw new HttpError(400, 'request body is not JSON');
  }
}
