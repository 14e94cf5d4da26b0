/**
 * Outputs: a built job's output paths and their metadata, its nix-support
 * report, and the uploads.
 *
 * UploadOutput: an OutputHeader (nar_hash "sha256:<nix base32>", nar_size,
 * references, deriver from the store's database) and then the output's NAR
 * in 64 KiB `data` chunks (zstd when large and the runner reads it), dumped
 * from the store's files as it is sent (never buffered whole), with
 * backpressure; the last output's stream ends with the job's CompleteRequest.
 * The runner's receipt says whether it verified the output. An abort cancels
 * the call and the upload ends without waiting for room or the receipt.
 */
import { createHash } from 'node:crypto';
import { lstatSync } from 'node:fs';
import { join } from 'node:path';
import type { ServiceError } from '@grpc/grpc-js';
import { NarHashMismatchError, PathNotInStoreError } from '../errors/index.ts';
import { exportOrder } from '../nix/export.ts';
import { parseHash } from '../nix/hash.ts';
import { narChunks } from '../nix/nar-writer.ts';
import { readBuildNixSupport } from '../nix/nix-support.ts';
import { servePool } from '../nix/serve-session.ts';
import { storePathName } from '../nix/store-path.ts';
import type { BuildOrder, CompleteRequest, NixSupport as ProtoNixSupport, PathInfo, UploadOutputMessage, UploadReceipt } from '../protocol/gen/runner.ts';
import { chooseCompression, compressChunks } from '../protocol/wire-compression.ts';
import { JobAbortedError, type Job, type JobContext } from './job.ts';

export const UPLOAD_CHUNK_SIZE = 64 * 1024;

export interface OutputInfo {
  readonly narHash: string;
  readonly narSize: number;
  readonly references: string[];
  readonly deriver: string | null;
  readonly closureSize: number;
}

/** The outputs' names and paths: from the order, `nix realisation info` for floating ones, or what the build printed. */
export async function outputPaths(ctx: JobContext, order: BuildOrder, built: Map<string, string>): Promise<{ name: string; path: string }[]> {
  const result = new Map<string, string>();
  for (const o of order.outputs) if (o.path) result.set(o.name, o.path);
  if (result.size < order.outputs.length) {
    const { stdout } = await ctx.store.runChecked('nix', ['realisation', 'info', '--json', order.drvPath]);
    const list = JSON.parse(stdout.toString('utf8')) as { id: string; outPath: string }[];
    for (const r of list) {
      const p = r.outPath.startsWith('/') ? r.outPath : `/nix/store/${r.outPath}`;
      result.set(r.id.slice(r.id.lastIndexOf('!') + 1), p);
    }
  }
  if (order.outputs.length === 0) {
    // An order without outputs listed: take what nix-store printed (names unknown → by position).
    let i = 0;
    for (const p of built.keys()) result.set(i++ === 0 ? 'out' : `out${i}`, p);
  }
  return [...result].map(([name, path]) => ({ name, path }));
}

/**
 * The outputs in the order they can be uploaded: an output another output
 * refers to goes first. The runner imports each upload into its store as it
 * arrives, and a store path can only be registered once its references are
 * valid; the order of the derivation's output names (`bin` before `out`, say)
 * does not follow references.
 */
export function uploadOrder<T extends { path: string }>(outputs: readonly T[], infos: ReadonlyMap<string, { references: readonly string[] }>): T[] {
  const byPath = new Map(outputs.map((o) => [o.path, o]));
  return exportOrder(byPath.keys(), (p) => infos.get(p)?.references ?? []).map((p) => byPath.get(p)!);
}

/**
 * Each output's NAR hash and size, references, deriver and closure size, from
 * the store: one query for the outputs. Their closures are the outputs and the
 * job's requisites (what the build could see), whose sizes the requisites'
 * metadata gives, as the runner's store holds them; an output referring to a
 * path outside them has its closure asked of the store.
 */
export async function outputInfos(ctx: JobContext, paths: readonly string[], requisites: readonly PathInfo[] = []): Promise<Map<string, OutputInfo>> {
  const store = ctx.store;
  // Over the store's serve session: no Nix process per step for metadata.
  return servePool(store).use(async (session) => {
    const infos = await session.queryPathInfos(paths);
    const known = new Map<string, { narSize: number; references: readonly string[] }>();
    for (const r of requisites) known.set(r.storePath, { narSize: Number(r.narSize), references: r.references });
    for (const i of infos) known.set(i.path, i);
    const result = new Map<string, OutputInfo>();
    for (const i of infos) {
      let closureSize = closureSizeOf(i.path, known);
      if (closureSize === null) {
        const sizes = await session.queryPathInfos(await session.queryClosure([i.path], false));
        closureSize = sizes.reduce((n, x) => n + x.narSize, 0);
      }
      result.set(i.path, {
        narHash: parseHash(i.narHash, 'sha256').format('base32'),
        narSize: i.narSize,
        references: i.references,
        deriver: i.deriver,
        closureSize,
      });
    }
    const missing = paths.filter((p) => !result.has(p));
    if (missing.length > 0) throw new PathNotInStoreError(missing);
    return result;
  });
}

/** The NAR sizes of `root`'s closure summed, or null if a path in it is not in `known`. */
function closureSizeOf(root: string, known: ReadonlyMap<string, { narSize: number; references: readonly string[] }>): number | null {
  const seen = new Set([root]);
  const stack = [root];
  let size = 0;
  while (stack.length > 0) {
    const k = known.get(stack.pop()!);
    if (k === undefined) return null;
    size += k.narSize;
    for (const r of k.references) {
      if (seen.has(r)) continue;
      seen.add(r);
      stack.push(r);
    }
  }
  return size;
}

/** The outputs' nix-support files (products, release name, metrics, failed), as the protocol carries them. */
export async function nixSupport(ctx: JobContext, outputs: readonly { name: string; path: string }[]): Promise<ProtoNixSupport> {
  const store = ctx.store;
  // Most outputs have no nix-support directory: told apart with a synchronous lstat or two each, instead
  // of the reader's asynchronous calls. Then the products are readBuildNixSupport's default: each output
  // that is a directory, as a `nix-build` product.
  const stats = outputs.map((o) => lstatSync(store.realPath(o.path), { throwIfNoEntry: false }));
  const anySupport = outputs.some((o, i) => stats[i]?.isDirectory() && lstatSync(join(store.realPath(o.path), 'nix-support'), { throwIfNoEntry: false }) !== undefined);
  if (!anySupport && stats.every((st) => st !== undefined)) {
    return {
      products: outputs
        .filter((_, i) => stats[i]!.isDirectory())
        .map((o) => ({ type: 'nix-build', subtype: o.name === 'out' ? '' : o.name, fileSize: undefined, sha256Hash: undefined, path: o.path, name: storePathName(o.path), defaultPath: undefined })),
      releaseName: undefined,
      metrics: [],
      failed: false,
    };
  }
  // Products name paths as the build saw them (/nix/store/…); they are read where the store keeps them.
  const s = await readBuildNixSupport(outputs, (p) => store.realPath(p));
  for (const r of s.rejected) ctx.log(`nix-support: ${r.file}:${r.line}: ${r.text ? `${r.text}: ` : ''}${r.reason}`);
  return {
    products: s.products.map((p) => ({
      type: p.type,
      subtype: p.subtype,
      fileSize: p.fileSize ?? undefined,
      sha256Hash: p.sha256hash ?? undefined,
      path: p.path,
      name: p.name,
      defaultPath: p.defaultPath || undefined,
    })),
    releaseName: s.releaseName ?? undefined,
    metrics: s.metrics.map((m) => ({ name: m.name, value: m.value, unit: m.unit ?? undefined })),
    failed: s.failed,
  };
}

/** Streams one output: header, then the NAR in 64 KiB chunks (zstd when large), with backpressure; the hash is of the plain NAR. */
export async function uploadOutput(
  ctx: JobContext,
  job: Job,
  name: string,
  path: string,
  info: { narHash: string; narSize: number; references: string[]; deriver: string | null },
  final?: () => CompleteRequest,
): Promise<UploadReceipt> {
  let finish!: (err: ServiceError | null, res?: UploadReceipt) => void;
  const receipt = new Promise<UploadReceipt>((resolve, reject) => {
    finish = (err, res) => (err ? reject(err) : resolve(res!));
  });
  let ended = false;
  const call = ctx.connection.client.client.uploadOutput((err, res) => {
    ended = true;
    finish(err, res);
  });
  const compression = chooseCompression(info.narSize, ctx.connection.uploadCompressions);
  const cancel = (): void => call.cancel();
  job.cancels.add(cancel);
  ctx.transfers.uploading++;
  let failed: unknown;
  call.on('error', (e) => {
    failed ??= e;
  });
  // The call ends with a status however the upload ends (CANCELLED once
  // aborted): taken here, it never becomes an unhandled rejection that kills
  // the builder. And it ends a wait for room: grpc-js ends a client stream
  // through its callback, without 'close' or 'error', so a wait on 'drain'
  // alone would never end.
  const callEnded = receipt.then(
    () => {},
    (e: unknown) => {
      failed ??= e;
    },
  );
  const write = (m: UploadOutputMessage): Promise<void> => {
    if (call.write(m)) return Promise.resolve();
    let done!: () => void;
    const drained = new Promise<void>((resolve) => {
      done = resolve;
      call.once('drain', done);
    });
    return Promise.race([drained, callEnded]).finally(() => call.off('drain', done));
  };
  try {
    await write({
      part: {
        $case: 'header',
        value: {
          jobId: job.order.jobId,
          outputName: name,
          storePath: path,
          narHash: info.narHash,
          narSize: info.narSize,
          references: info.references,
          deriver: info.deriver ?? undefined,
          ca: undefined,
          compression,
        },
      },
    });
    const h = createHash('sha256');
    let size = 0;
    // A NAR of one chunk is read synchronously (a few system calls of at most 64 KiB in all):
    // cheaper than a round trip to the thread pool for each.
    const plain = async function* (this: void, chunks: AsyncIterable<Uint8Array>): AsyncGenerator<Uint8Array> {
      for await (const chunk of chunks) {
        h.update(chunk);
        size += chunk.length;
        yield chunk;
      }
    };
    for await (const chunk of compressChunks(plain(narChunks(ctx.store.realPath(path), { chunkSize: UPLOAD_CHUNK_SIZE, io: info.narSize <= UPLOAD_CHUNK_SIZE ? 'sync' : 'async' })), compression)) {
      if (failed !== undefined || job.aborted) break;
      await write({ part: { $case: 'data', value: Buffer.from(chunk.buffer, chunk.byteOffset, chunk.byteLength) } });
    }
    if (job.aborted) throw new JobAbortedError();
    if (failed === undefined) {
      const actual = `sha256:${h.digest('hex')}`;
      if (size !== info.narSize || !parseHash(actual).equals(parseHash(info.narHash, 'sha256'))) {
        call.cancel();
        throw new NarHashMismatchError(path, { narHash: info.narHash, narSize: info.narSize }, { narHash: parseHash(actual).format('base32'), narSize: size });
      }
      if (final) await write({ part: { $case: 'complete', value: final() } });
      call.end();
    }
    const r = await receipt;
    if (!r.verified) throw new Error(`the runner did not verify ${path} (received ${r.bytesReceived} bytes)`);
    return r;
  } finally {
    ctx.transfers.uploading--;
    job.cancels.delete(cancel);
    // Left early (aborted, or reading the output failed): the runner must not wait for the rest.
    if (!ended) call.cancel();
  }
}
