/**
 * The cache format over S3, against a real radosgw: the same objects as a
 * directory cache with Nix's headers, real Nix 2.8 substituting from the
 * bucket over HTTP (it has no s3:// support) with the key trusted and
 * refusing without, multipart uploads for a NAR above the part size, and a
 * wrong secret failing at open.
 */
import { randomBytes } from 'node:crypto';
import { createServer as createHttpServer, request as httpRequest } from 'node:http';
import { existsSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { AbortMultipartUploadCommand, CreateMultipartUploadCommand, HeadObjectCommand, ListMultipartUploadsCommand } from '@aws-sdk/client-s3';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { BinaryCache } from '../../src/cache/binary-cache.ts';
import { DirectoryStorage } from '../../src/cache/directory-storage.ts';
import { S3Storage } from '../../src/cache/s3-storage.ts';
import type { CacheStorage } from '../../src/cache/storage.ts';
import { parseStoreUri, type S3StoreUri } from '../../src/cache/store-uri.ts';
import { uploadClosure } from '../../src/cache/upload.ts';
import { S3RequestError } from '../../src/errors/index.ts';
import { WorkerPool } from '../../src/workers/pool.ts';
import { type CephS3, startCephS3 } from '../helpers/ceph-s3.ts';
import { buildFixtures, failureOf, type Fixtures, generateKey, nixPathInfo, runNix, runNixLines, tempDir, trusting } from './fixtures.ts';

let tmp: string;
let pool: WorkerPool;
let fx: Fixtures;
let s3: CephS3;
let key: { secretFile: string; publicKey: string };
let otherKey: { secretFile: string; publicKey: string };
let credentials: string;

beforeAll(async () => {
  tmp = tempDir('hydrant-s3-cache-');
  pool = new WorkerPool({ threads: 2 });
  [s3, fx, key, otherKey] = await Promise.all([startCephS3(), buildFixtures(tmp), generateKey(tmp, 'hydrant-s3-1'), generateKey(tmp, 'someone-else-1')]);
  credentials = join(tmp, 'credentials');
  writeFileSync(
    credentials,
    `[default]\naws_access_key_id = ${s3.accessKey}\naws_secret_access_key = ${s3.secretKey}\n` +
      `[wrong]\naws_access_key_id = ${s3.accessKey}\naws_secret_access_key = not-the-secret\n`,
  );
}, 180_000);

afterAll(async () => {
  await s3?.stop();
  await pool?.close();
  rmSync(tmp, { recursive: true, force: true });
});

/** An s3:// store URI for a bucket of the test server. */
const s3Uri = (bucket: string, params = '') => `s3://${bucket}?endpoint=${s3.hostPort}&scheme=http&region=us-east-1${params ? `&${params}` : ''}`;

async function openS3(bucket: string, params: string): Promise<BinaryCache> {
  return BinaryCache.open(s3Uri(bucket, params), pool, { awsCredentialsFile: credentials });
}

/** Caches opened before a describe's tests and each filled by `fill`, closed after them. */
function filledCaches(open: () => Promise<BinaryCache[]>, fill: (c: BinaryCache) => Promise<void>, timeout: number): void {
  let caches: BinaryCache[] = [];
  beforeAll(async () => {
    caches = await open();
    for (const c of caches) await fill(c);
  }, timeout);
  afterAll(async () => {
    for (const c of caches) await c.close();
  });
}

async function keysOf(cache: BinaryCache): Promise<string[]> {
  const keys: string[] = [];
  for await (const e of cache.storage.list('')) keys.push(e.key);
  return keys.sort();
}

const head = (bucket: string, key: string) => s3.client.send(new HeadObjectCommand({ Bucket: bucket, Key: key }));

/** `nix copy` from the bucket through radosgw's path-style HTTP URL. */
function copyFromBucket(bucket: string, root: string, paths: string[], publicKey: string): Promise<unknown> {
  return runNix('nix', ['copy', '--from', `${s3.endpoint}/${bucket}`, '--to', root, ...paths], { extraConfig: trusting(publicKey) });
}

describe.each(['directory', 'bucket'] as const)('the storage contract, %s', (kind) => {
  let storage: CacheStorage;

  beforeAll(async () => {
    if (kind === 'directory') storage = await DirectoryStorage.open(join(tmp, 'contract'));
    else {
      await s3.createBucket('contract');
      storage = await S3Storage.open(parseStoreUri(s3Uri('contract')) as S3StoreUri, { credentialsFile: credentials });
    }
  });

  afterAll(() => storage?.close());

  it('writes each key once, reads it back, lists by prefix and deletes', async () => {
    expect(await storage.get('a/one')).toBeNull();
    expect(await storage.has('a/one')).toBe(false);
    expect(await storage.put('a/one', 'first', { contentType: 'text/plain' })).toBe(true);
    expect(await storage.put('a/one', 'second', { contentType: 'text/plain' })).toBe(false);
    expect((await storage.get('a/one'))!.body.toString()).toBe('first');
    const file = await storage.tempFile('a/two');
    writeFileSync(file, 'from a file');
    expect(await storage.put('a/two', { file }, { contentType: 'text/plain' })).toBe(true);
    // The prepared file is taken over.
    expect(existsSync(file)).toBe(false);
    expect(await storage.put('b', new Uint8Array([1, 2, 3]), { contentType: 'application/octet-stream' })).toBe(true);
    const listed = async (prefix: string) => {
      const out: [string, number][] = [];
      for await (const e of storage.list(prefix)) out.push([e.key, e.size]);
      return out.sort();
    };
    expect(await listed('a/')).toEqual([['a/one', 5], ['a/two', 11]]);
    expect(await listed('')).toEqual([['a/one', 5], ['a/two', 11], ['b', 3]]);
    expect(await listed('a/t')).toEqual([['a/two', 11]]);
    await storage.delete('a/one');
    await storage.delete('a/one');
    expect(await storage.has('a/one')).toBe(false);
    expect(await listed('')).toEqual([['a/two', 11], ['b', 3]]);
  });
});

describe('the same format over a directory and a bucket', () => {
  const params = () => `compression=xz&write-nar-listing=1&secret-key=${key.secretFile}`;
  let dir: BinaryCache;
  let bucket: BinaryCache;

  filledCaches(
    async () => {
      await s3.createBucket('same-format', { publicRead: true });
      dir = await BinaryCache.open(`file://${join(tmp, 'same-format')}?${params()}`, pool);
      bucket = await openS3('same-format', params());
      return [dir, bucket];
    },
    async (c) => {
      await uploadClosure(c, fx.all);
      await c.uploadLogText(fx.drvs.tree, Buffer.from('building tree\n'));
      await c.uploadRealisations(fx.drvs.ca);
    },
    120_000,
  );

  it('writes the same keys with the same bytes', async () => {
    const keys = await keysOf(dir);
    expect(keys.filter((k) => k.endsWith('.narinfo'))).toHaveLength(fx.all.length);
    expect(keys.filter((k) => k.endsWith('.ls'))).toHaveLength(fx.all.length);
    expect(keys).toContain('nix-cache-info');
    expect(keys.some((k) => k.startsWith('realisations/'))).toBe(true);
    expect(await keysOf(bucket)).toEqual(keys);
    for (const k of keys) {
      const [a, b] = await Promise.all([dir.storage.get(k), bucket.storage.get(k)]);
      expect(b!.body.equals(a!.body), k).toBe(true);
    }
  });

  it("sets Nix's Content-Type on each kind of object and no Content-Encoding", async () => {
    const want: [RegExp, string][] = [
      [/^nix-cache-info$/, 'text/x-nix-cache-info'],
      [/\.narinfo$/, 'text/x-nix-narinfo'],
      [/^nar\/[0-9a-z]{52}\.nar\.xz$/, 'application/x-nix-nar'],
      [/\.ls$/, 'application/json'],
      [/^log\//, 'text/plain; charset=utf-8'],
      [/^realisations\/.*\.doi$/, 'application/json'],
    ];
    const keys = await keysOf(bucket);
    for (const k of keys) {
      const rule = want.find(([re]) => re.test(k));
      expect(rule, k).toBeDefined();
      const h = await head('same-format', k);
      expect(h.ContentType, k).toBe(rule![1]);
      expect(h.ContentEncoding, k).toBeUndefined();
    }
  });

  it('lets Nix 2.8 substitute every path over HTTP with the key trusted', async () => {
    const root = join(tmp, 'root-trusted');
    await copyFromBucket('same-format', root, fx.all, key.publicKey);
    const [local, copied] = await Promise.all([nixPathInfo(fx.all), nixPathInfo(fx.all, root)]);
    for (const p of fx.all) expect(copied.get(p)?.narHash, p).toBe(local.get(p)!.narHash);
  });

  it('makes Nix 2.8 refuse the paths when it trusts another key', async () => {
    const err = await failureOf(copyFromBucket('same-format', join(tmp, 'root-untrusted'), [fx.paths.single], otherKey.publicKey));
    expect(err.stderr).toMatch(/lacks a valid signature|no signature/);
  });
});

describe('two runners publishing the same closure to one bucket', () => {
  it('each path is published once, and no narinfo is replaced', async () => {
    await s3.createBucket('two-runners');
    const params = `compression=zstd&write-nar-listing=1`;
    const [a, b] = await Promise.all([openS3('two-runners', `${params}&secret-key=${key.secretFile}`), openS3('two-runners', `${params}&secret-key=${otherKey.secretFile}`)]);
    try {
      const [ra, rb] = await Promise.all([uploadClosure(a, fx.all), uploadClosure(b, fx.all)]);
      // Between them every path went up, none twice: a runner that found a narinfo (or lost the race to write it) skipped it.
      const published = [...ra.uploaded, ...rb.uploaded].map((u) => u.storePath).sort();
      expect(new Set(published).size).toBe(published.length);
      expect((await keysOf(a)).filter((k) => k.endsWith('.narinfo'))).toHaveLength(fx.all.length);
      // Each narinfo is the one its uploader wrote: signed by exactly that runner's key.
      for (const u of ra.uploaded) expect((await a.readNarInfo(u.storePath))!.sigs.filter((s) => s.startsWith('hydrant-s3-1:'))).toHaveLength(1);
      for (const u of rb.uploaded) expect((await a.readNarInfo(u.storePath))!.sigs.filter((s) => s.startsWith('someone-else-1:'))).toHaveLength(1);
      // A second narinfo for a path the bucket has is refused by the server, not overwritten.
      const first = (await a.storage.get(`${fx.paths.single.slice(11, 43)}.narinfo`))!.body;
      expect(await b.storage.put(`${fx.paths.single.slice(11, 43)}.narinfo`, 'StorePath: replaced\n', { contentType: 'text/x-nix-narinfo' })).toBe(false);
      expect((await a.storage.get(`${fx.paths.single.slice(11, 43)}.narinfo`))!.body.equals(first)).toBe(true);
    } finally {
      await a.close();
      await b.close();
    }
  }, 60_000);
});

describe('narinfo-, ls- and log-compression', () => {
  let plain: BinaryCache;
  let packed: BinaryCache;

  filledCaches(
    async () => {
      await s3.createBucket('plain-meta');
      await s3.createBucket('packed-meta', { publicRead: true });
      plain = await openS3('plain-meta', `compression=zstd&write-nar-listing=1&secret-key=${key.secretFile}`);
      packed = await openS3('packed-meta', `compression=zstd&write-nar-listing=1&narinfo-compression=br&ls-compression=xz&log-compression=bzip2&secret-key=${key.secretFile}`);
      return [plain, packed];
    },
    async (c) => {
      await uploadClosure(c, [fx.paths.user]);
      await c.uploadLogText(fx.drvs.user, Buffer.from('a log line\n'.repeat(100)));
    },
    60_000,
  );

  it('compresses each as configured and says so in Content-Encoding, never on NARs', async () => {
    const keys = await keysOf(packed);
    const encoding = async (k: string) => (await head('packed-meta', k)).ContentEncoding;
    for (const k of keys) {
      const want = k.endsWith('.narinfo') ? 'br' : k.endsWith('.ls') ? 'xz' : k.startsWith('log/') ? 'bzip2' : undefined;
      expect(await encoding(k), k).toBe(want);
    }
    // The stored bytes differ from the plain bucket's; undone, they are the same.
    const narinfo = keys.find((k) => k.endsWith('.narinfo'))!;
    const [a, b] = await Promise.all([plain.storage.get(narinfo), packed.storage.get(narinfo)]);
    expect(b!.body.equals(a!.body)).toBe(false);
    expect((await pool.decompress(b!.body, 'br')).equals(a!.body)).toBe(true);
    expect(await packed.readNarInfo(fx.paths.user)).toEqual(await plain.readNarInfo(fx.paths.user));
  });

  it('is read by Nix 2.8, which undoes the Content-Encoding', async () => {
    const root = join(tmp, 'root-packed');
    await copyFromBucket('packed-meta', root, [fx.paths.user], key.publicKey);
    expect((await nixPathInfo([fx.paths.user], root)).get(fx.paths.user)?.narHash).toBe((await nixPathInfo([fx.paths.user])).get(fx.paths.user)!.narHash);
  });
});

describe('a NAR above the part size', () => {
  let path: string;

  beforeAll(async () => {
    const file = join(tmp, 'hydrant-s3-random');
    // 13 MiB that no compressor shrinks: three parts of 5 MiB.
    writeFileSync(file, randomBytes(13 * 1024 * 1024));
    [path] = (await runNixLines('nix-store', ['--add', file])) as [string];
  });

  const pending = async (bucket: string) => (await s3.client.send(new ListMultipartUploadsCommand({ Bucket: bucket }))).Uploads ?? [];

  it('goes up in parts, leaves no unfinished upload, and Nix substitutes it', async () => {
    await s3.createBucket('multipart', { publicRead: true });
    const cache = await openS3('multipart', `compression=none&buffer-size=${5 * 1024 * 1024}&secret-key=${key.secretFile}`);
    try {
      const r = await cache.uploadPath(path);
      expect(r.uploaded).toBe(true);
      const info = (await cache.readNarInfo(path))!;
      const h = await head('multipart', info.url);
      // S3's multipart ETag: the MD5 of the parts' MD5s, then the part count.
      expect(h.ETag).toMatch(/-3"?$/);
      expect(h.ContentLength).toBe(info.fileSize);
      expect(h.ContentType).toBe('application/x-nix-nar');
      expect(await pending('multipart')).toEqual([]);
      const root = join(tmp, 'root-multipart');
      await copyFromBucket('multipart', root, [path], key.publicKey);
      expect((await nixPathInfo([path], root)).get(path)?.narHash).toBe((await nixPathInfo([path])).get(path)!.narHash);
    } finally {
      await cache.close();
    }
  }, 60_000);

  it('is aborted when a part fails, leaving no parts and no narinfo; a later attempt succeeds', async () => {
    await s3.createBucket('quota');
    // A bucket quota of 1 MiB refuses every 5 MiB part (radosgw checks a part against cached
    // bucket stats, so a quota between one and two parts lets parts in flight together pass).
    await s3.admin(['quota', 'set', '--quota-scope=bucket', '--bucket=quota', `--max-size=${1024 * 1024}`]);
    await s3.admin(['quota', 'enable', '--quota-scope=bucket', '--bucket=quota']);
    const cache = await openS3('quota', `compression=none&secret-key=${key.secretFile}`);
    try {
      const err = (await cache.uploadPath(path).catch((e: unknown) => e)) as S3RequestError;
      expect(err).toBeInstanceOf(S3RequestError);
      expect(err.s3Code).toBe('QuotaExceeded');
      expect(err.key).toMatch(/^nar\/[0-9a-z]{52}\.nar$/);
      expect(err.message).toContain(`s3://quota/${err.key}`);
      expect(await pending('quota')).toEqual([]);
      expect(await cache.has(path)).toBe(false);
      expect(await keysOf(cache)).toEqual(['nix-cache-info']);

      await s3.admin(['quota', 'disable', '--quota-scope=bucket', '--bucket=quota']);
      expect((await cache.uploadPath(path)).uploaded).toBe(true);
      expect(await cache.has(path)).toBe(true);
    } finally {
      await cache.close();
    }
  }, 60_000);

  it('lists an unfinished upload (so that the checks above can fail)', async () => {
    const { UploadId } = await s3.client.send(new CreateMultipartUploadCommand({ Bucket: 'multipart', Key: 'left-open' }));
    expect((await pending('multipart')).map((u) => u.Key)).toEqual(['left-open']);
    await s3.client.send(new AbortMultipartUploadCommand({ Bucket: 'multipart', Key: 'left-open', UploadId }));
  });
});

/**
 * Answers the first `failures` PUTs with S3's 500 InternalError and passes
 * everything else through to radosgw unchanged (SigV4 signs the Host header,
 * which is forwarded as sent).
 */
async function faultyProxy(failures: number): Promise<{ port: number; puts: number; faults: number; close(): Promise<void> }> {
  const upstream = Number(new URL(s3.endpoint).port);
  const state = { port: 0, puts: 0, faults: 0, close: () => Promise.resolve() };
  const server = createHttpServer((req, res) => {
    if (req.method === 'PUT') {
      state.puts++;
      if (state.faults < failures) {
        state.faults++;
        req.resume();
        res.writeHead(500, { 'content-type': 'application/xml' });
        res.end('<?xml version="1.0" encoding="UTF-8"?><Error><Code>InternalError</Code><Message>injected</Message></Error>');
        return;
      }
    }
    const out = httpRequest({ host: '127.0.0.1', port: upstream, method: req.method, path: req.url, headers: req.headers }, (up) => {
      res.writeHead(up.statusCode!, up.headers);
      up.pipe(res);
    });
    out.on('error', () => res.destroy());
    req.pipe(out);
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  state.port = (server.address() as { port: number }).port;
  state.close = () => new Promise<void>((resolve) => (server.closeAllConnections(), server.close(() => resolve())));
  return state;
}

describe('transient errors', () => {
  const viaProxy = (port: number, bucket: string) =>
    BinaryCache.open(`s3://${bucket}?endpoint=127.0.0.1:${port}&scheme=http&compression=none&secret-key=${key.secretFile}`, pool, { awsCredentialsFile: credentials });

  it('are retried: a PUT answered 500 three times still goes up', async () => {
    await s3.createBucket('flaky');
    const proxy = await faultyProxy(3);
    try {
      const cache = await viaProxy(proxy.port, 'flaky');
      // Opening wrote nix-cache-info through the three failures.
      expect(proxy.faults).toBe(3);
      expect((await cache.uploadPath(fx.paths.single)).uploaded).toBe(true);
      await cache.close();
      expect((await head('flaky', 'nix-cache-info')).ContentType).toBe('text/x-nix-cache-info');
    } finally {
      await proxy.close();
    }
  });

  it('fail after five attempts with S3 error code, bucket and key', async () => {
    await s3.createBucket('broken');
    const proxy = await faultyProxy(Number.MAX_SAFE_INTEGER);
    try {
      const err = (await viaProxy(proxy.port, 'broken').catch((e: unknown) => e)) as S3RequestError;
      expect(err).toBeInstanceOf(S3RequestError);
      expect(err.message).toMatch(/^S3 PutObject of s3:\/\/broken\/nix-cache-info failed: InternalError \(HTTP 500\): injected$/);
      expect(proxy.puts).toBe(5);
    } finally {
      await proxy.close();
    }
  });
});

describe('credentials', () => {
  it('finds them in the awsCredentialsFile, by profile', async () => {
    await s3.createBucket('creds');
    const cache = await openS3('creds', 'profile=default');
    await cache.close();
    expect((await head('creds', 'nix-cache-info')).ContentType).toBe('text/x-nix-cache-info');
  });

  it('fails at open with one line naming the bucket, the key and S3 error code when the secret is wrong', async () => {
    const err = await openS3('creds', 'profile=wrong').then(
      () => null,
      (e: unknown) => e,
    );
    expect(err).toBeInstanceOf(S3RequestError);
    const e = err as S3RequestError;
    expect(e.code).toBe('S3_REQUEST');
    expect(e.s3Code).toBe('SignatureDoesNotMatch');
    expect(e.message).toContain('s3://creds/nix-cache-info');
    expect(e.message).not.toContain('\n');
  });

  it('names a missing bucket', async () => {
    const err = (await openS3('no-such-bucket', '').catch((e: unknown) => e)) as S3RequestError;
    expect(err).toBeInstanceOf(S3RequestError);
    expect(err.s3Code).toBe('NoSuchBucket');
    expect(err.bucket).toBe('no-such-bucket');
  });
});
