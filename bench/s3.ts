/**
 * S3 uploads against a local radosgw: upload throughput of Hydrant's S3
 * storage against a bare PutObject loop over the same files, and the
 * runner's CPU per output NAR when it compresses and uploads it itself
 * (BinaryCache.publish) against builder-direct uploads (only presigning,
 * completing and writing the narinfo stay on the runner).
 */
import { createHash, randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { PutObjectCommand } from '@aws-sdk/client-s3';
import { BinaryCache } from '../src/cache/binary-cache.ts';
import { queryPathInfos } from '../src/cache/local-path-info.ts';
import { PresignedUploads } from '../src/cache/presigned-uploads.ts';
import { partSizes } from '../src/cache/s3-presign.ts';
import { runNix, runNixLines } from '../src/nix/tools.ts';
import { WorkerPool } from '../src/workers/pool.ts';
import { startCephS3 } from '../test/helpers/ceph-s3.ts';
import { benchOptions, log, round } from './common.ts';

export const describe = 'S3 upload throughput (Hydrant vs bare PutObject) and runner CPU per output with and without presigned uploads (radosgw)';

const cpuMs = (): number => {
  const u = process.cpuUsage();
  return (u.user + u.system) / 1000;
};

export async function run(argv: string[]): Promise<Record<string, unknown>> {
  const o = benchOptions(argv, { small: 200, large: 2, largeMiB: 12, compression: 'xz' });
  const dir = mkdtempSync(join(tmpdir(), 'hydrant-bench-s3-'));
  log('starting radosgw');
  const s3 = await startCephS3();
  const pool = new WorkerPool({ threads: 2 });
  // Nix's serve sessions do not hold the process open (they are unref'd): this does, until the end.
  const alive = setInterval(() => {}, 1000);
  try {
    const credentials = join(dir, 'credentials');
    writeFileSync(credentials, `[default]\naws_access_key_id = ${s3.accessKey}\naws_secret_access_key = ${s3.secretKey}\n`);
    const files = [
      ...Array.from({ length: o.small }, () => randomBytes(4096)),
      ...Array.from({ length: o.large }, () => randomBytes(o.largeMiB * 1024 * 1024)),
    ];
    const bytes = files.reduce((n, f) => n + f.length, 0);

    log('radosgw up; throughput');
    // 1. Throughput: bare PutObject loop vs Hydrant's storage (If-None-Match, multipart above the part size).
    await s3.createBucket('bare');
    await s3.createBucket('hydrant');
    // Warm both paths first (connections, the gateway's caches): the first requests of a fresh radosgw are slow.
    for (let i = 0; i < 10; i++) await s3.client.send(new PutObjectCommand({ Bucket: 'bare', Key: `warm/${i}`, Body: files[i % files.length] }));
    let t = performance.now();
    for (const [i, f] of files.entries()) await s3.client.send(new PutObjectCommand({ Bucket: 'bare', Key: `o/${i}`, Body: f }));
    const bareMs = performance.now() - t;
    const cache = await BinaryCache.open(`s3://hydrant?endpoint=${s3.hostPort}&scheme=http&compression=none`, pool, { awsCredentialsFile: credentials });
    for (let i = 0; i < 10; i++) await cache.storage.put(`warm/${i}`, files[i % files.length]!, { contentType: 'application/octet-stream' });
    t = performance.now();
    for (const [i, f] of files.entries()) await cache.storage.put(`o/${i}`, f, { contentType: 'application/octet-stream' });
    const hydrantMs = performance.now() - t;
    await cache.close();

    log('runner CPU per output');
    // 2. Runner CPU per output: NARs of fresh store paths (random, so compression works hard).
    const paths: string[] = [];
    for (let i = 0; i < 4; i++) {
      const f = join(dir, `blob-${i}-${randomBytes(4).toString('hex')}`);
      writeFileSync(f, randomBytes(4 * 1024 * 1024));
      paths.push((await runNixLines('nix-store', ['--add', f]))[0]!);
    }
    const uri = (bucket: string) => `s3://${bucket}?endpoint=${s3.hostPort}&scheme=http&compression=${o.compression}`;
    await s3.createBucket('runner');
    await s3.createBucket('direct');
    const viaRunner = await BinaryCache.open(uri('runner'), pool, { awsCredentialsFile: credentials });
    const infos = await queryPathInfos(paths);
        let c0 = cpuMs();
    for (const info of infos) await viaRunner.publish(info);
    const runnerCpu = cpuMs() - c0;
    await viaRunner.close();

    const direct = await BinaryCache.open(uri('direct'), pool, { awsCredentialsFile: credentials });
    const uploads = new PresignedUploads(direct);
    let directCpu = 0;
    let readBackBytes = 0;
    for (const p of paths) {
      // The builder's share, outside the measured windows: compress and hash (here with the xz CLI).
      const nar = (await runNix('nix-store', ['--dump', p])).stdout as Buffer;
      const file = o.compression === 'xz' ? (await import('node:child_process')).execFileSync('xz', ['-c', '-6'], { input: nar, maxBuffer: 1 << 30 }) : nar;
      readBackBytes += file.length;
      const sizes = partSizes(file.length, 5 * 1024 * 1024);
      const parts = sizes.map((size, i) => {
        const off = sizes.slice(0, i).reduce((a, b) => a + b, 0);
        return { partNumber: i + 1, size, md5: createHash('md5').update(file.subarray(off, off + size)).digest() };
      });
      c0 = cpuMs();
      const grant = await uploads.grant('bench', { storePath: p, fileSha256: createHash('sha256').update(file).digest(), fileSize: file.length, parts });
      directCpu += cpuMs() - c0;
      const etags: string[] = [];
      let off = 0;
      for (const [i, put] of grant.puts.entries()) {
        const r = await fetch(put.url, { method: 'PUT', headers: put.headers, body: file.subarray(off, off + sizes[i]!) });
        etags.push(r.headers.get('etag') ?? '');
        off += sizes[i]!;
      }
      c0 = cpuMs();
      await uploads.complete('bench', p, etags);
      directCpu += cpuMs() - c0;
    }
    await direct.close();
    const narBytes = infos.reduce((n, i) => n + i.narSize, 0);
    return {
      throughput: {
        objects: files.length,
        bytes,
        barePutObjectMiBps: round(bytes / 1048576 / (bareMs / 1000), 2),
        hydrantMiBps: round(bytes / 1048576 / (hydrantMs / 1000), 2),
      },
      runnerCpuPerOutput: {
        outputs: paths.length,
        compression: o.compression,
        narBytes,
        runnerPublishesMs: round(runnerCpu / paths.length),
        presignedMs: round(directCpu / paths.length),
        // The plain NAR still reaches the runner over gRPC in both modes (it imports and verifies it); these are the bytes it sends to S3.
        runnerBytesToS3: { runnerPublishes: 'the compressed NARs', presigned: 0 },
        // With presigned uploads the runner reads each object back (its check before signing, docs/CACHES.md).
        runnerBytesFromS3: { runnerPublishes: 0, presigned: readBackBytes },
      },
    };
  } finally {
    clearInterval(alive);
    await pool.close();
    await s3.stop();
    rmSync(dir, { recursive: true, force: true });
  }
}
