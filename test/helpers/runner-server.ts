import { writeFile } from 'node:fs/promises';
import path from 'node:path';
import type { Server } from '@grpc/grpc-js';
import { TokenAuth } from '../../src/protocol/auth.ts';
import { hostStore } from '../../src/nix/private-store.ts';
import { narChunks } from '../../src/nix/nar-writer.ts';
import { queryPathInfos } from '../../src/nix/transfer.ts';
import type { NarChunk } from '../../src/protocol/gen/runner.ts';
import { createRunnerServer, listenInsecure, type RunnerHandlers, type RunnerServerOptions } from '../../src/protocol/server.ts';

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

/**
 * A runner's FetchNar answer for `req` from the host store: each path's info
 * as a header, then its NAR in 4 KiB chunks (`onServed` hears each path).
 */
export async function* hostNars(
  req: { storePath: string; moreStorePaths: string[] },
  onServed?: (path: string) => void,
): AsyncGenerator<NarChunk> {
  for (const p of [req.storePath, ...req.moreStorePaths]) {
    const [info] = await queryPathInfos(hostStore, [p]);
    onServed?.(p);
    yield {
      part: {
        $case: 'header',
        value: {
          info: { storePath: info!.path, narHash: info!.narHash.format('base32'), narSize: info!.narSize, references: info!.references, deriver: info!.deriver ?? undefined, ca: undefined },
          compression: 0,
        },
      },
    };
    for await (const c of narChunks(p, { chunkSize: 4096 })) yield { part: { $case: 'data', value: c } };
  }
}

/** A StreamLog handler that appends each job's log to `logs`. */
export function collectLogs(logs: Map<string, Buffer>): RunnerHandlers['streamLog'] {
  return async (_ctx, jobId, chunks) => {
    let n = 0;
    for await (const c of chunks) {
      logs.set(jobId, Buffer.concat([logs.get(jobId) ?? Buffer.alloc(0), c.data]));
      n += c.data.length;
    }
    return { bytesReceived: n };
  };
}
