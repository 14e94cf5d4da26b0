/**
 * Builder-direct uploads (the runner's Joined announced presigned uploads):
 * after an output went up to the runner by UploadOutput (which imports and
 * verifies it), the builder compresses its NAR as the cache wants, declares
 * the compressed file (size, SHA-256, each part's MD5), PUTs the parts to
 * the URLs the runner presigned and reports the ETags; the runner checks
 * them and writes the signed narinfo. The runner never compresses the NAR
 * nor sends it to S3.
 */
import { createHash } from 'node:crypto';
import { createWriteStream } from 'node:fs';
import { mkdtemp, open, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pipeline } from 'node:stream/promises';
import { Readable, Transform } from 'node:stream';
import { partSizes } from '../cache/s3-presign.ts';
import { narChunks } from '../nix/nar-writer.ts';
import type { PresignedUploads } from '../protocol/gen/runner.ts';
import { createCompressor, parseCompressionMethod } from '../workers/compression.ts';
import { unary } from './calls.ts';
import { JobAbortedError, type Job, type JobContext } from './job.ts';

/** Parts in flight at once (each held in memory). */
const PARTS_IN_FLIGHT = 4;

export async function uploadPresigned(ctx: JobContext, job: Job, storePath: string, target: PresignedUploads): Promise<void> {
  const dir = await mkdtemp(join(tmpdir(), 'hydrant-presign-'));
  try {
    const file = join(dir, 'nar');
    const sha = createHash('sha256');
    let fileSize = 0;
    const tap = new Transform({
      transform(chunk: Buffer, _enc, cb) {
        sha.update(chunk);
        fileSize += chunk.length;
        cb(null, chunk);
      },
    });
    await pipeline(Readable.from(narChunks(ctx.store.realPath(storePath))), createCompressor(parseCompressionMethod(target.compression)), tap, createWriteStream(file));
    if (job.aborted) throw new JobAbortedError();
    const fh = await open(file, 'r');
    try {
      const sizes = partSizes(fileSize, Number(target.partSize));
      const read = async (i: number): Promise<Buffer> => {
        const off = sizes.slice(0, i).reduce((a, b) => a + b, 0);
        const buf = Buffer.alloc(sizes[i]!);
        const { bytesRead } = await fh.read(buf, 0, buf.length, off);
        if (bytesRead !== buf.length) throw new Error(`short read of the compressed NAR of ${storePath}`);
        return buf;
      };
      const parts: { partNumber: number; size: number; md5: Buffer }[] = [];
      for (let i = 0; i < sizes.length; i++) {
        parts.push({ partNumber: i + 1, size: sizes[i]!, md5: createHash('md5').update(await read(i)).digest() });
      }
      const client = ctx.connection.client.client;
      const jobId = job.order.jobId;
      const grant = await unary<{ present: boolean; puts: { url: string; headers: Record<string, string> }[] }>((cb) =>
        client.requestPresignedUpload({ jobId, storePath, fileSha256: sha.digest(), fileSize, parts }, cb),
      );
      if (grant.present) return;
      if (grant.puts.length !== parts.length) throw new Error(`the runner presigned ${grant.puts.length} URLs for ${parts.length} parts`);
      const etags = new Array<string>(parts.length);
      let next = 0;
      const worker = async (): Promise<void> => {
        while (next < parts.length) {
          const i = next++;
          if (job.aborted) throw new JobAbortedError();
          const put = grant.puts[i]!;
          const r = await fetch(put.url, { method: 'PUT', headers: put.headers, body: await read(i) });
          // 412: a single PUT found the object there (named by its hash: the same bytes).
          if (!r.ok && !(r.status === 412 && parts.length === 1)) {
            throw new Error(`S3 refused part ${i + 1} of ${storePath}: HTTP ${r.status} ${(await r.text()).slice(0, 200)}`);
          }
          await r.arrayBuffer().catch(() => {});
          etags[i] = r.headers.get('etag') ?? '';
        }
      };
      await Promise.all(Array.from({ length: Math.min(PARTS_IN_FLIGHT, parts.length) }, worker));
      await unary((cb) => client.completePresignedUpload({ jobId, storePath, etags }, cb));
    } finally {
      await fh.close();
    }
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}
