import { writeFile } from 'node:fs/promises';
import path from 'node:path';
import type { Server } from '@grpc/grpc-js';
import { TokenAuth } from '../../src/protocol/auth.ts';
import { createRunnerServer, listenInsecure, type RunnerServerOptions } from '../../src/protocol/server.ts';

/**
 * A runner's gRPC server for protocol tests, on a free loopback port: the
 * runner options but `auth`, which accepts the token in `dir/token`
 * (written as `tokenLine`, so a test can check that white space around it
 * is ignored).
 */
export async function startRunnerServer(
  dir: string,
  tokenLine: string,
  opts: Omit<RunnerServerOptions, 'auth'>,
): Promise<{ server: Server; port: number; tokenFile: string }> {
  const tokenFile = path.join(dir, 'token');
  await writeFile(tokenFile, tokenLine);
  const server = createRunnerServer({ ...opts, auth: await TokenAuth.fromFiles([tokenFile]) });
  return { server, port: await listenInsecure(server, '127.0.0.1:0'), tokenFile };
}
