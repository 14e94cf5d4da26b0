/**
 * Builder-direct uploads against a real S3 server (radosgw): URLs the
 * runner presigns accept exactly the declared bytes, and a builder that
 * sends other bytes, or reports parts it did not upload, is refused.
 */
import { createHash, randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { GetObjectCommand, ListMultipartUploadsCommand } from '@aws-sdk/client-s3';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type CephS3, startCephS3 } from '../helpers/ceph-s3.ts';
import { S3Storage } from '../../src/cache/s3-storage.ts';
import { type DeclaredPart, MIN_PART_SIZE, S3Presigner, partSizes, type PresignedRequest } from '../../src/cache/s3-presign.ts';
import { parseStoreUri, type S3StoreUri } from '../../src/cache/store-uri.ts';
import { PresignedUploadError } from '../../src/errors/index.ts';
import { BinaryCache } from '../../src/cache/binary-cache.ts';
import { PresignedUploads } from '../../src/cache/presigned-uploads.ts';
import { WorkerPool } from '../../src/workers/pool.ts';
import { buildFixtures, generateKey, runNix, type Fixtures } from '../cache/fixtures.ts';

const md5 = (b: Uint8Array): Buffer => createHash('md5').update(b).digest();

/** What a builder does with a presigned request: PUT the bytes with the given headers. */
async function put(req: PresignedRequest, body: Uint8Array): Promise<Response> {
  return fetch(req.url, { method: 'PUT', headers: req.headers, body });
}

describe('presigned uploads to radosgw', () => {
  let s3: CephS3;
  let storage: S3Storage;
  let presigner: S3Presigner;
  let pool: WorkerPool;
  let fx: Fixtures;
  let cache: BinaryCache;
  let uploads: PresignedUploads;
  const dir = mkdtempSync(join(tmpdir(), 'hydrant-presign-'));

  beforeAll(async () => {
    s3 = await startCephS3();
    await s3.createBucket('presigned');
    const credentials = join(dir, 'credentials');
    writeFileSync(credentials, `[default]\naws_access_key_id = ${s3.accessKey}\naws_secret_access_key = ${s3.secretKey}\n`);
    storage = await S3Storage.open(parseStoreUri(`s3://presigned?endpoint=${s3.hostPort}&scheme=http&region=us-east-1`) as S3StoreUri, {
      credentialsFile: credentials,
    });
    presigner = new S3Presigner(storage);
    await s3.createBucket('presigned-cache');
    pool = new WorkerPool({ threads: 1 });
    const key = await generateKey(dir, 'presigned-unit-1');
    fx = await buildFixtures(dir);
    cache = await BinaryCache.open(
      `s3://presigned-cache?endpoint=${s3.hostPort}&scheme=http&compression=none&secret-key=${key.secretFile}`,
      pool,
      { awsCredentialsFile: credentials },
    );
    uploads = new PresignedUploads(cache);
  }, 300_000);

  afterAll(async () => {
    await cache?.close();
    await pool?.close();
    await storage?.close();
    await s3?.stop();
    rmSync(dir, { recursive: true, force: true });
  });

  const stored = async (key: string): Promise<Buffer | null> => {
    const o = await storage.get(key);
    return o?.body ?? null;
  };

  it('a single presigned PUT stores the declared bytes, once', async () => {
    const body = randomBytes(1000);
    const req = await presigner.presignPut('nar/single.nar.xz', body.length, md5(body), 'application/x-nix-nar');
    expect(req.url).toContain('X-Amz-Signature=');
    expect((await put(req, body)).status).toBe(200);
    expect(await stored('nar/single.nar.xz')).toEqual(body);
    expect(await presigner.storedSize('nar/single.nar.xz')).toBe(body.length);
    const r = await s3.client.send(new GetObjectCommand({ Bucket: 'presigned', Key: 'nar/single.nar.xz' }));
    expect(r.ContentType).toBe('application/x-nix-nar');
    // Write-once: the same URL again does not replace it.
    expect((await put(req, body)).status).toBe(412);
  });

  it('other bytes than declared are refused by S3 and nothing is stored', async () => {
    const declared = randomBytes(1000);
    const req = await presigner.presignPut('nar/hostile.nar.xz', declared.length, md5(declared), 'application/x-nix-nar');
    const other = Buffer.from(declared);
    other[0]! ^= 0xff;
    const r = await put(req, other);
    expect(r.status).toBeGreaterThanOrEqual(400);
    expect(await stored('nar/hostile.nar.xz')).toBeNull();
  });

  it('a URL signed for one key does not write another', async () => {
    const body = randomBytes(100);
    const req = await presigner.presignPut('nar/a.nar', body.length, md5(body), 'application/x-nix-nar');
    const r = await put({ ...req, url: req.url.replace('/nar/a.nar', '/nar/b.nar') }, body);
    expect(r.status).toBe(403);
    expect(await stored('nar/b.nar')).toBeNull();
  });

  it('multipart: parts above the part size go up through presigned URLs and the runner completes them', async () => {
    const body = randomBytes(MIN_PART_SIZE + 12345);
    const sizes = partSizes(body.length, MIN_PART_SIZE);
    expect(sizes.length).toBe(2);
    const key = 'nar/multi.nar.zst';
    const uploadId = await presigner.createMultipart(key, 'application/x-nix-nar');
    const parts: DeclaredPart[] = [];
    let off = 0;
    for (const [i, size] of sizes.entries()) {
      parts.push({ partNumber: i + 1, size, md5: md5(body.subarray(off, off + size)) });
      off += size;
    }
    const etags: string[] = [];
    off = 0;
    for (const p of parts) {
      const r = await put(await presigner.presignPart(key, uploadId, p), body.subarray(off, off + p.size));
      expect(r.status).toBe(200);
      etags.push(r.headers.get('etag')!);
      off += p.size;
    }
    expect(await presigner.completeMultipart(key, uploadId, parts, etags)).toBe(true);
    expect(await presigner.storedSize(key)).toBe(body.length);
    expect((await stored(key))!.equals(body)).toBe(true);
  });

  it('multipart: a part with other bytes is refused, a reported ETag that is not the declared MD5 is not completed', async () => {
    const body = randomBytes(MIN_PART_SIZE + 10);
    const key = 'nar/multi-hostile.nar';
    const uploadId = await presigner.createMultipart(key, 'application/x-nix-nar');
    const sizes = partSizes(body.length, MIN_PART_SIZE);
    const parts: DeclaredPart[] = [
      { partNumber: 1, size: sizes[0]!, md5: md5(body.subarray(0, sizes[0]!)) },
      { partNumber: 2, size: sizes[1]!, md5: md5(body.subarray(sizes[0]!)) },
    ];
    const first = await put(await presigner.presignPart(key, uploadId, parts[0]!), body.subarray(0, sizes[0]!));
    expect(first.status).toBe(200);
    const tampered = Buffer.from(body.subarray(sizes[0]!));
    tampered[0]! ^= 1;
    const second = await put(await presigner.presignPart(key, uploadId, parts[1]!), tampered);
    expect(second.status).toBeGreaterThanOrEqual(400);
    // The builder reports an ETag of its own for the part S3 refused.
    const forged = md5(tampered).toString('hex');
    await expect(presigner.completeMultipart(key, uploadId, parts, [first.headers.get('etag')!, `"${forged}"`])).rejects.toBeInstanceOf(PresignedUploadError);
    await presigner.abort(key, uploadId);
    expect(await presigner.storedSize(key)).toBeNull();
    const open = await s3.client.send(new ListMultipartUploadsCommand({ Bucket: 'presigned', Prefix: key }));
    expect(open.Uploads ?? []).toEqual([]);
  });

  /** The path's NAR as the builder would compress it (compression=none: the NAR itself). */
  const narOf = async (path: string): Promise<Buffer> => (await runNix('nix-store', ['--dump', path])).stdout as Buffer;
  const declare = (storePath: string, body: Buffer) => ({
    storePath,
    fileSha256: createHash('sha256').update(body).digest(),
    fileSize: body.length,
    parts: [{ partNumber: 1, size: body.length, md5: md5(body) }],
  });

  it('a builder that declares one NAR and uploads other bytes is refused, and nothing is signed', async () => {
    const path = fx.paths.single;
    const nar = await narOf(path);
    const grant = await uploads.grant('job-1', declare(path, nar));
    expect(grant.present).toBe(false);
    const other = Buffer.from(nar);
    other[other.length - 1]! ^= 1;
    expect((await put(grant.puts[0]!, other)).status).toBeGreaterThanOrEqual(400);
    await expect(uploads.complete('job-1', path, [''])).rejects.toBeInstanceOf(PresignedUploadError);
    expect(await cache.has(path)).toBe(false);
    // A completion for a path nobody presigned is refused alike.
    await expect(uploads.complete('job-2', path, [''])).rejects.toBeInstanceOf(PresignedUploadError);
    expect(await cache.has(path)).toBe(false);
  });

  const narObjects = async (): Promise<string[]> => {
    const keys: string[] = [];
    for await (const e of cache.storage.list('nar/')) keys.push(e.key);
    return keys;
  };

  it('a hostile builder that declares its own bytes consistently (hashes, size, MD5) gets them stored, but the read-back refuses them: no narinfo, no object left, the honest upload then succeeds', async () => {
    const path = fx.paths.tree;
    const nar = await narOf(path);
    expect(await cache.has(path)).toBe(false);
    // Each forgery passes S3's checks (the declaration matches the bytes sent) and fails one of the runner's.
    const flipped = Buffer.from(nar);
    flipped[flipped.length - 1]! ^= 1;
    const forgeries: [string, Buffer][] = [
      ['same size, other NAR bytes (NarHash)', flipped],
      ['a longer body (NarSize)', Buffer.concat([nar, Buffer.from('trailing')])],
      ['random bytes', randomBytes(777)],
    ];
    for (const [i, [, body]] of forgeries.entries()) {
      const owner = `hostile-${i}`;
      const grant = await uploads.grant(owner, declare(path, body));
      expect(grant.present).toBe(false);
      const r = await put(grant.puts[0]!, body);
      expect(r.status).toBe(200);
      const err = await uploads.complete(owner, path, [r.headers.get('etag')!]).catch((e: unknown) => e);
      expect(err).toBeInstanceOf(PresignedUploadError);
      expect((err as Error).message).toMatch(/NarHash|bytes, the output's NAR has|does not decompress/);
      expect(await cache.has(path)).toBe(false);
      // The refused object is gone: it would otherwise stand, write-once, where an honest NAR of those bytes goes.
      expect(await narObjects()).toEqual([]);
    }
    // A builder whose declared FileHash is not the hash of what it sends (MD5 and size right) is refused too.
    const liar = { ...declare(path, nar), fileSha256: createHash('sha256').update('something else').digest() };
    const g = await uploads.grant('liar', liar);
    const r = await put(g.puts[0]!, nar);
    expect(r.status).toBe(200);
    await expect(uploads.complete('liar', path, [r.headers.get('etag')!])).rejects.toThrow(/not the declared FileHash/);
    expect(await cache.has(path)).toBe(false);
    expect(await narObjects()).toEqual([]);
    // Nothing lost: an honest builder (or the runner's own publisher) still gets the path in.
    const honest = await uploads.grant('honest', declare(path, nar));
    expect(honest.present).toBe(false);
    const ok = await put(honest.puts[0]!, nar);
    expect((await uploads.complete('honest', path, [ok.headers.get('etag')!])).uploaded).toBe(true);
    const info = (await cache.readNarInfo(path))!;
    expect(info.narSize).toBe(nar.length);
    expect(info.fileHash!.toBase16()).toBe(createHash('sha256').update(nar).digest('hex'));
    expect(info.sigs.some((x) => x.startsWith('presigned-unit-1:'))).toBe(true);
    expect(await narObjects()).toEqual([info.url]);
  });

  it('a declaration that does not cut the file as the cache does is refused before anything is presigned', async () => {
    const path = fx.paths.single;
    const nar = await narOf(path);
    const d = declare(path, nar);
    await expect(uploads.grant('job-3', { ...d, parts: [{ ...d.parts[0]!, size: nar.length - 1 }] })).rejects.toBeInstanceOf(PresignedUploadError);
    await expect(uploads.grant('job-3', { ...d, fileSha256: Buffer.alloc(5) })).rejects.toBeInstanceOf(PresignedUploadError);
  });

  it('an honest upload is completed and published with a narinfo from the runner\'s own store, signed', async () => {
    const path = fx.paths.single;
    const nar = await narOf(path);
    const grant = await uploads.grant('job-4', declare(path, nar));
    const r = await put(grant.puts[0]!, nar);
    expect(r.status).toBe(200);
    const published = await uploads.complete('job-4', path, [r.headers.get('etag')!]);
    expect(published.uploaded).toBe(true);
    const info = (await cache.readNarInfo(path))!;
    expect(info.fileSize).toBe(nar.length);
    expect(info.sigs.some((s) => s.startsWith('presigned-unit-1:'))).toBe(true);
    expect((await storage.get(info.url)) ?? null).toBeNull(); // another bucket
    const stored = await cache.storage.get(info.url);
    expect(stored!.body.equals(nar)).toBe(true);
    // Now the cache has it: a second builder is told so and gets no URL.
    expect(await uploads.grant('job-5', declare(path, nar))).toEqual({ present: true, puts: [] });
  });
});
