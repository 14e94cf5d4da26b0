/**
 * Inputs: a job's requisites (from the order, or FetchRequisites), the NARs
 * of those missing from the store (one FetchNar call, checked against their
 * PathInfo), imported in one verified export stream, and the ordered .drv
 * when the requisites did not bring it.
 *
 * FetchNar: the runner sends a NarHeader (PathInfo, compression NONE or the
 * one it chose from those offered) and then the path's NAR bytes in `data`
 * chunks. The agent wraps the NARs of all missing requisites into one
 * `nix-store --export` stream itself and imports it with importVerified,
 * which checks each NAR's hash and size against FetchRequisites' PathInfo
 * before anything is imported.
 */
import type { ClientReadableStream } from '@grpc/grpc-js';
import { createHash } from 'node:crypto';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { BuilderJobError, NarHashMismatchError, NixFormatError, UnexpectedStorePathError } from '../errors/index.ts';
import { derivationStorePath } from '../nix/derivation-paths.ts';
import { derivationReferences, parseDerivation } from '../nix/derivation.ts';
import { writeExport, type ExportWriteEntry } from '../nix/export.ts';
import { parseHash } from '../nix/hash.ts';
import { narChunks } from '../nix/nar-writer.ts';
import { servePool } from '../nix/serve-session.ts';
import { storePathName } from '../nix/store-path.ts';
import { ResultState, type FetchRequisitesResponse, type NarChunk, type NarHeader, type PathInfo } from '../protocol/gen/runner.ts';
import { decompressChunks, readableCompressions } from '../protocol/wire-compression.ts';
import { JobAbortedError, unary, type Job, type JobContext } from './job.ts';
import { importVerified } from '../nix/transfer.ts';

/** Refuses a NAR header that is not the one asked for (path, compression, hash and size). */
function checkNarHeader(want: PathInfo, h: NarHeader): void {
  if (!readableCompressions().includes(h.compression)) {
    throw new NixFormatError('FetchNar', `${want.storePath}: compression ${h.compression} was not asked for`);
  }
  if (h.info && h.info.storePath !== want.storePath) throw new UnexpectedStorePathError(h.info.storePath, 'unexpected');
  if (h.info && (h.info.narHash !== '' || Number(h.info.narSize) !== 0)) {
    const a = parseHash(h.info.narHash, 'sha256');
    const b = parseHash(want.narHash, 'sha256');
    if (!a.equals(b) || Number(h.info.narSize) !== Number(want.narSize)) {
      throw new NarHashMismatchError(
        want.storePath,
        { narHash: b.format('base32'), narSize: Number(want.narSize) },
        { narHash: a.format('base32'), narSize: Number(h.info.narSize) },
      );
    }
  }
}

/** The job's requisites, dependencies first: carried in the order, or asked for (FetchRequisites). */
export async function fetchRequisites(ctx: JobContext, job: Job): Promise<PathInfo[]> {
  const { order } = job;
  if (order.requisitesIncluded) return order.requisites;
  try {
    const res = await ctx.connection.withSession(
      () => job.aborted,
      (c) => unary<FetchRequisitesResponse>((cb) => c.client.fetchRequisites({ jobId: order.jobId }, cb)),
    );
    return res.requisites;
  } catch (err) {
    if (err instanceof JobAbortedError) throw err;
    throw new BuilderJobError(ResultState.RESULT_STATE_PREPARING_FAILURE, `cannot fetch requisites: ${(err as Error).message}`, { cause: err });
  }
}

/** The requisites not valid in the store, fetched as plain NARs and imported in one verified export stream. */
export async function importMissing(ctx: JobContext, job: Job, requisites: readonly PathInfo[]): Promise<void> {
  if (requisites.length === 0) return;
  const store = ctx.store;
  const paths = requisites.map((r) => r.storePath);
  const valid = new Set(await servePool(store).use((session) => session.queryValid(paths)));
  // Dependencies first, as FetchRequisites promises: keep its order.
  const missing = requisites.filter((p) => !valid.has(p.storePath));
  if (missing.length === 0) return;
  const expected = new Map(missing.map((p) => [p.storePath, { narHash: p.narHash, narSize: Number(p.narSize) }]));
  // One FetchNar call streams them all, in order; each entry reads its part.
  const nars = fetchNars(ctx, job, missing);
  const entries = (async function* (): AsyncGenerator<ExportWriteEntry> {
    for (const p of missing) {
      yield { path: p.storePath, references: p.references, deriver: p.deriver ?? null, nar: nars.next(p) };
    }
  })();
  try {
    await importVerified(store, writeExport(entries), expected, { spoolDir: ctx.config.buildDir });
  } finally {
    nars.close();
  }
}

/**
 * The plain NARs of `wanted`, in order, from one FetchNar call (zstd on the
 * wire where the runner chose it): `next(p)` yields p's bytes, which must
 * be read to the end before the next path's.
 */
function fetchNars(ctx: JobContext, job: Job, wanted: readonly PathInfo[]): { next(want: PathInfo): AsyncGenerator<Uint8Array>; close(): void } {
  const [first, ...more] = wanted;
  let call: ClientReadableStream<NarChunk> | undefined;
  let it: AsyncIterator<NarChunk> | undefined;
  let pending: NarChunk | undefined;
  const cancel = (): void => call?.cancel();
  return {
    async *next(want: PathInfo): AsyncGenerator<Uint8Array> {
      if (job.aborted) throw new JobAbortedError();
      if (!it) {
        await ctx.connection.waitJoined();
        call = ctx.connection.client.client.fetchNar({ jobId: job.order.jobId, storePath: first!.storePath, moreStorePaths: more.map((p) => p.storePath), accept: readableCompressions() });
        job.cancels.add(cancel);
        it = (call as AsyncIterable<NarChunk>)[Symbol.asyncIterator]();
      }
      const head = pending ?? (await it.next()).value;
      pending = undefined;
      if (head?.part?.$case !== 'header') throw new NixFormatError('FetchNar', `${want.storePath}: no header`);
      checkNarHeader(want, head.part.value);
      const compression = head.part.value.compression;
      ctx.transfers.downloading++;
      try {
        const source = it;
        const wire = async function* (): AsyncGenerator<Uint8Array> {
          for (let r = await source.next(); !r.done; r = await source.next()) {
            if (r.value.part?.$case === 'header') {
              pending = r.value; // the next path's
              return;
            }
            if (r.value.part?.$case === 'data') yield r.value.part.value;
          }
        };
        yield* decompressChunks(wire(), compression);
      } finally {
        ctx.transfers.downloading--;
      }
      if (job.aborted) throw new JobAbortedError();
    },
    close(): void {
      job.cancels.delete(cancel);
      call?.cancel();
    },
  };
}

/** Adds the ordered .drv to the store from the order's bytes when the requisites did not bring it. */
export async function ensureDerivation(ctx: JobContext, job: Job): Promise<void> {
  const { order } = job;
  const store = ctx.store;
  const check = await store.run('nix-store', ['--check-validity', order.drvPath]);
  if (check.exitCode === 0) return;
  if (order.drv.length === 0) throw new BuilderJobError(ResultState.RESULT_STATE_PREPARING_FAILURE, `${order.drvPath} is not in the store and the order carries no .drv`);
  const text = Buffer.from(order.drv).toString('utf8');
  const drv = parseDerivation(text);
  const name = storePathName(order.drvPath).replace(/\.drv$/, '');
  const computed = derivationStorePath(drv, name);
  if (computed !== order.drvPath) throw new UnexpectedStorePathError(order.drvPath, 'unexpected');
  const dir = await mkdtemp(join(ctx.config.buildDir, 'hydrant-drv-'));
  try {
    const file = join(dir, 'drv');
    await writeFile(file, order.drv);
    const h = createHash('sha256');
    let size = 0;
    for await (const c of narChunks(file)) {
      h.update(c);
      size += c.length;
    }
    const narHash = `sha256:${h.digest('hex')}`;
    const entry: ExportWriteEntry = { path: order.drvPath, references: derivationReferences(drv), deriver: null, nar: narChunks(file) };
    await importVerified(store, writeExport([entry]), new Map([[order.drvPath, { narHash, narSize: size }]]), { spoolDir: ctx.config.buildDir });
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}
