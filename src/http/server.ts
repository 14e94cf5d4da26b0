import { createServer, type IncomingMessage, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { ConfigError, HttpError } from '../errors/index.ts';
import type { TokenAuth } from '../protocol/auth.ts';
import type { Logger } from '../util/logger.ts';
import { Router } from './router.ts';

export interface HttpApi {
  readonly server: Server;
  readonly port: number;
  close(): Promise<void>;
}

/**
 * Write endpoints need `Authorization: Bearer <token>` with a token of
 * `apiTokenPaths`; with none configured they are refused outright.
 */
export function writeGuard(auth: TokenAuth | null): (req: IncomingMessage) => void {
  return (req) => {
    if (!auth) throw new HttpError(403, 'write endpoints are disabled: no apiTokenPaths configured');
    if (!auth.verifyHeader(req.headers.authorization)) throw new HttpError(401, 'missing or invalid bearer token');
  };
}

/** Parses `host:port` (port 0: any free port). */
export function parseListen(listen: string): { host: string; port: number } {
  const m = /^(.*):(\d+)$/.exec(listen);
  if (!m) throw new ConfigError(`listen address '${listen}' is not host:port`);
  return { host: m[1]!.replace(/^\[(.*)\]$/, '$1'), port: Number(m[2]) };
}

/** Serves `router` on `listen`; resolves once listening. */
export async function startHttpApi(router: Router, listen: string, log: Logger): Promise<HttpApi> {
  const { host, port } = parseListen(listen);
  const server = createServer((req, res) => {
    router.handle(req, res).catch((err: unknown) => log.error({ url: req.url, err: String((err as Error)?.stack ?? err) }, 'HTTP handler failed'));
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, host, () => {
      server.off('error', reject);
      resolve();
    });
  });
  return {
    server,
    port: (server.address() as AddressInfo).port,
    close: () =>
      new Promise<void>((resolve) => {
        server.close(() => resolve());
        server.closeAllConnections();
      }),
  };
}
