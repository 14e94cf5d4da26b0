/**
 * `hydrant cache gc` on caches of real Nix-built paths, a directory and a
 * radosgw bucket: exactly the objects of paths outside the roots' closure
 * (computed independently with `nix-store -qR`) go, with their NARs,
 * listings, logs and realisations; nothing outside the prefix, nothing
 * younger than the minimum age, nothing in a dry run; unfinished multipart
 * uploads older than the minimum age are aborted; Nix still substitutes
 * every live path afterwards.
 */
import { mkdirSync, readdirSync, readFileSync, statSync, utimesSync, writeFileSync } from 'node:fs';
import { basename, join, relative } from 'node:path';
import { CreateMultipartUploadCommand, ListMultipartUploadsCommand, PutObjectCommand, UploadPartCommand } from '@aws-sdk/client-s3';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { BinaryCache } from '../../src/cache/binary-cache.ts';
import { DirectoryStorage } from '../../src/cache/directory-storage.ts';
import { collectCacheGarbage, type CacheGcOptions } from '../../src/cache/gc.ts';
import { localClosure } from '../../src/cache/local-closure.ts';
import { listingFile, logFile, narInfoFile } from '../../src/cache/layout.ts';
import { S3Storage } from '../../src/cache/s3-storage.ts';
import type { CacheStorage } from '../../src/cache/storage.ts';
import { parseStoreUri, type S3StoreUri } from '../../src/cache/store-uri.ts';
import { uploadClosure } from '../../src/cache/upload.ts';
import { ConfigError, GcRootsDirError } from '../../src/errors/index.ts';
import { parseNarInfo } from '../../src/nix/narinfo.ts';
import { WorkerPool } from '../../src/workers/pool.ts';
import { withRoom } from '../../src/workers/with-room.ts';
import { type CephS3, startCephS3 } from '../helpers/ceph-s3.ts';
import { runCli } from '../helpers/cli.ts';
import { buildFixtures, copyFromCache, type Fixtures, generateKey, runNixLines, tempDir } from './fixtures.ts';

let tmp: string;
let pool: WorkerPool;
let fx: Fixtures;
let s3: CephS3;
let key: { secretFile: string; publicKey: string };
let credentials: string;

const HOUR = 3600_000;

beforeAll(async () => {
  tmp = tempDir('hydrant-cache-gc-');
  pool = new WorkerPool({ threads: 2 });
  [s3, fx, key] = await Promise.all([startCephS3(), buildFixtures(tmp), generateKey(tmp, 'hydrant-gc-1')]);
  credentials = join(tmp, 'credentials');
  writeFileSync(credentials, `[default]\naws_access_key_id = ${s3.accessKey}\naws_secret_access_key = ${s3.secretKey}\n`);
}, 180_000);

afterAll(async () => {
  await s3?.stop();
  await pool?.close();
});

/** The closure as Nix computes it from its own database. */
async function nixClosure(paths: string[]): Promise<Set<string>> {
  return new Set(await runNixLines('nix-store', ['-qR', ...paths]));
}

/** The outPath of each realisation seen by keysOf, by location and key (read before a collection may delete it). */
const realisedPaths = new Map<string, string>();

async function keysOf(storage: CacheStorage, prefix = ''): Promise<Set<string>> {
  const keys = new Set<string>();
  for await (const e of storage.list(prefix)) {
    keys.add(e.key);
    const id = `${storage.location} ${e.key}`;
    if (e.key.includes('realisations/') && !realisedPaths.has(id)) {
      realisedPaths.set(id, (JSON.parse((await storage.get(e.key))!.body.toString()) as { outPath: string }).outPath);
    }
  }
  return keys;
}

const decode: CacheGcOptions['decode'] = async (body, encoding) =>
  encoding === undefined ? body : withRoom(pool, () => pool.decompress(body, encoding as 'xz' | 'bzip2' | 'br' | 'zstd'));

/** Fills a cache: every fixture's closure, logs of three derivations, the CA path's realisation. */
async function populate(cache: BinaryCache): Promise<void> {
  await uploadClosure(cache, fx.all);
  for (const drv of [fx.drvs.user, fx.drvs.self, fx.drvs.single]) await cache.uploadLogText(drv, Buffer.from(`log of ${basename(drv)}\n`));
  expect((await cache.uploadRealisations(fx.drvs.ca)).length).toBeGreaterThan(0);
}

/**
 * The keys a cache under `prefix` must hold after collection with `roots`,
 * from `nix-store -qR` and the layout: narinfos and listings of the live
 * paths, the NARs their narinfos name, the logs of live derivers and rooted
 * derivations, the realisations of live outputs, and nix-cache-info.
 */
async function expectedKeys(storage: CacheStorage, prefix: string, roots: string[], before: Set<string>): Promise<Set<string>> {
  const uploaded = await nixClosure(fx.all);
  const live = [...(await nixClosure(roots))].filter((p) => uploaded.has(p));
  const keys = new Set([`${prefix}nix-cache-info`]);
  const drvs = new Set(roots.filter((r) => r.endsWith('.drv')).map((r) => basename(r)));
  for (const p of live) {
    keys.add(prefix + narInfoFile(p));
    keys.add(prefix + listingFile(p));
    const got = await storage.get(prefix + narInfoFile(p));
    const info = parseNarInfo((await decode(got!.body, got!.contentEncoding)).toString());
    keys.add(prefix + info.url);
    if (info.deriver) drvs.add(info.deriver);
  }
  for (const d of drvs) if (before.has(prefix + logFile(`/nix/store/${d}`))) keys.add(prefix + logFile(`/nix/store/${d}`));
  for (const k of before) {
    if (!k.startsWith(`${prefix}realisations/`)) continue;
    const outPath = realisedPaths.get(`${storage.location} ${k}`)!;
    if (live.includes(`/nix/store/${basename(outPath)}`)) keys.add(k);
  }
  return keys;
}

/** Every file under `dir`, relative, with its mtime. */
function snapshot(dir: string): Map<string, number> {
  const out = new Map<string, number>();
  const walk = (d: string) => {
    for (const e of readdirSync(d, { withFileTypes: true })) {
      const p = join(d, e.name);
      if (e.isDirectory()) walk(p);
      else out.set(relative(dir, p), statSync(p).mtimeMs);
    }
  };
  walk(dir);
  return out;
}

function writeRoots(dir: string, paths: string[], junk: string[] = []): void {
  mkdirSync(dir, { recursive: true });
  for (const p of paths) writeFileSync(join(dir, basename(p)), '');
  for (const j of junk) writeFileSync(join(dir, j), '');
}

describe('a directory cache under a prefix', () => {
  let top: string;
  let cacheDir: string;
  let rootsDir: string;
  let storage: DirectoryStorage;
  let roots: string[];
  let before: Set<string>;
  const prefix = 'cache/';
  const outside = ['other/00000000000000000000000000000000.narinfo', 'cache-old/nix-cache-info', 'stray.nar'];

  beforeAll(async () => {
    top = join(tmp, 'dir');
    cacheDir = join(top, 'cache');
    const cache = await BinaryCache.open(`file://${cacheDir}?compression=xz&write-nar-listing=1&secret-key=${key.secretFile}`, pool);
    await populate(cache);
    await cache.close();
    for (const o of outside) {
      mkdirSync(join(top, o, '..'), { recursive: true });
      writeFileSync(join(top, o), 'not the cache\n');
    }
    writeFileSync(join(cacheDir, 'README'), 'an object of no binary-cache kind\n');
    // Live: user (and tree), multi's dev (and out), single's derivation (its log). Dead: self, single, ca.
    roots = [fx.paths.user, fx.paths.multiDev, fx.drvs.single];
    rootsDir = join(tmp, 'dir-roots');
    writeRoots(rootsDir, roots, ['not-a-store-path', `${'e'.repeat(32)}-`, '.hidden']);
    mkdirSync(join(rootsDir, `${'a'.repeat(32)}-a-directory`));
    // Every object is three hours old, but self's narinfo was written just now.
    const old = new Date(Date.now() - 3 * HOUR);
    for (const f of snapshot(top).keys()) utimesSync(join(top, f), old, old);
    const fresh = new Date();
    utimesSync(join(cacheDir, narInfoFile(fx.paths.self)), fresh, fresh);
    storage = await DirectoryStorage.open(top);
    before = await keysOf(storage);
  });

  afterAll(() => storage?.close());

  it('refuses a prefix without a trailing slash and a missing roots directory, deleting nothing', async () => {
    const snap = snapshot(top);
    const r = await runCli(['cache', 'gc', '--store', `file://${top}`, '--roots-dir', rootsDir, '--prefix', 'cache']);
    expect(r.code).toBe(1);
    expect(r.stderr.trim().split('\n')).toHaveLength(1);
    expect(r.stderr).toMatch(/CONFIG.*--prefix 'cache' must end in '\/'/);
    await expect(collectCacheGarbage({ storage, prefix: 'cache', roots: [], minAgeMs: 0, dryRun: false, decode })).rejects.toBeInstanceOf(ConfigError);
    const missing = await runCli(['cache', 'gc', '--store', `file://${top}`, '--roots-dir', join(tmp, 'no-such-roots'), '--prefix', prefix]);
    expect(missing.code).toBe(1);
    expect(missing.stderr).toContain(new GcRootsDirError(join(tmp, 'no-such-roots'), 'does not exist').message);
    expect(snapshot(top)).toEqual(snap);
  });

  it('--dry-run lists exactly what a collection deletes, reports junk roots, and changes nothing', async () => {
    const snap = snapshot(top);
    const r = await runCli(['cache', 'gc', '--store', `file://${top}`, '--roots-dir', rootsDir, '--prefix', prefix, '--min-age', '1h', '--dry-run']);
    expect(r.stderr).toBe('');
    expect(r.code).toBe(0);
    expect(snapshot(top)).toEqual(snap);
    // The young narinfo of self keeps self's objects alive, as a root would.
    const keep = await expectedKeys(storage, prefix, [...roots, fx.paths.self], before);
    const listed = new Set([...r.stdout.matchAll(/^would delete (\S+)$/gm)].map((m) => m[1]!));
    expect(listed).toEqual(new Set([...before].filter((k) => k.startsWith(prefix) && !keep.has(k) && k !== `${prefix}README`)));
    expect(listed.size).toBeGreaterThan(5);
    expect(r.stdout).toMatch(/ignored 4 entries of .* that name no store path: "\.hidden", "a{32}-a-directory", "e{32}-", "not-a-store-path"$/m);
    expect(r.stdout).toContain('(dry run: nothing deleted)');
    expect(r.stdout).toMatch(/^kept: 1 objects of no binary-cache kind: "cache\/README"$/m);
  });

  it('deletes exactly the dead objects older than --min-age, keeping what a young narinfo needs', async () => {
    const r = await runCli(['cache', 'gc', '--store', `file://${top}`, '--roots-dir', rootsDir, '--prefix', prefix, '--min-age', '1h']);
    expect(r.code).toBe(0);
    const keep = await expectedKeys(storage, prefix, [...roots, fx.paths.self], before);
    const after = await keysOf(storage);
    expect(after).toEqual(new Set([...keep, `${prefix}README`, ...outside]));
    expect(after.has(prefix + narInfoFile(fx.paths.single))).toBe(false);
    expect(after.has(prefix + logFile(fx.drvs.single))).toBe(true);
    expect(after.has(prefix + logFile(fx.drvs.self))).toBe(true);
    const deleted = before.size - after.size;
    expect(r.stdout).toMatch(new RegExp(`^deleted: ${deleted} objects, .*; freed `, 'm'));
  });

  it('once the young narinfo has aged, leaves exactly the roots\' closure, which Nix still substitutes', async () => {
    const report = await collectCacheGarbage({
      storage, prefix, roots: roots.map((p) => basename(p)), minAgeMs: HOUR, dryRun: false, decode, now: new Date(Date.now() + 2 * HOUR),
    });
    expect(report.failures).toEqual([]);
    expect(report.rootsMissing).toEqual([basename(fx.drvs.single)]);
    const keep = await expectedKeys(storage, prefix, roots, before);
    const after = await keysOf(storage);
    expect(after).toEqual(new Set([...keep, `${prefix}README`, ...outside]));
    expect(after.has(prefix + logFile(fx.drvs.self))).toBe(false);
    // The CA path's realisation went with it; those of live outputs stayed.
    const realised = [...before].filter((k) => k.includes('realisations/')).map((k) => basename(realisedPaths.get(`${storage.location} ${k}`)!));
    expect(realised).toContain(basename(fx.paths.ca));
    expect([...after].filter((k) => k.includes('realisations/')).map((k) => basename(realisedPaths.get(`${storage.location} ${k}`)!))).toEqual(
      realised.filter((p) => p !== basename(fx.paths.ca)),
    );
    const live = [fx.paths.user, fx.paths.multiDev];
    await copyFromCache(cacheDir, join(tmp, 'dir-copy'), live, key.publicKey);
    // Idempotent: a second collection finds nothing more.
    const again = await collectCacheGarbage({
      storage, prefix, roots: roots.map((p) => basename(p)), minAgeMs: HOUR, dryRun: false, decode, now: new Date(Date.now() + 2 * HOUR),
    });
    expect(again.deleted.count).toBe(0);
    expect(again.kept.count).toBe(keep.size);
  });
});

describe('a root the cache lacks', () => {
  it('keeps, through the local store, the cached paths it refers to (an upload in progress)', async () => {
    // user is being uploaded: its reference tree is in the cache, its own narinfo not yet.
    const dir = join(tmp, 'in-flight');
    const cache = await BinaryCache.open(`file://${dir}?compression=xz`, pool);
    await uploadClosure(cache, [fx.paths.tree, fx.paths.self]);
    await cache.close();
    const storage = await DirectoryStorage.open(dir);
    try {
      const o: CacheGcOptions = {
        storage, prefix: '', roots: [basename(fx.paths.user)], minAgeMs: HOUR, dryRun: true, decode, now: new Date(Date.now() + 2 * HOUR),
      };
      const withLocal = await collectCacheGarbage({ ...o, localClosure });
      expect(withLocal.rootsMissing).toEqual([basename(fx.paths.user)]);
      expect(withLocal.liveThroughLocalStore).toBe(1);
      expect(withLocal.deletedKeys.filter((k) => k.endsWith('.narinfo'))).toEqual([narInfoFile(fx.paths.self)]);
      // Without a local store only the cache's own narinfos count: tree goes too.
      const cacheOnly = await collectCacheGarbage(o);
      expect(new Set(cacheOnly.deletedKeys.filter((k) => k.endsWith('.narinfo')))).toEqual(new Set([narInfoFile(fx.paths.self), narInfoFile(fx.paths.tree)]));
      const real = await collectCacheGarbage({ ...o, dryRun: false, localClosure });
      expect(real.deleted.count).toBe(withLocal.deleted.count);
      expect(await storage.has(narInfoFile(fx.paths.tree))).toBe(true);
      expect(await storage.has(narInfoFile(fx.paths.self))).toBe(false);
    } finally {
      await storage.close();
    }
  });
});

describe('a radosgw bucket', () => {
  const uri = (bucket: string, params: string) => `s3://${bucket}?endpoint=${s3.hostPort}&scheme=http&region=us-east-1&${params}`;
  let storage: S3Storage;
  let before: Set<string>;
  let roots: string[];
  let uploadId: string;

  beforeAll(async () => {
    await s3.createBucket('gc-cache');
    const params = `compression=xz&write-nar-listing=1&narinfo-compression=xz&secret-key=${key.secretFile}`;
    const cache = await BinaryCache.open(uri('gc-cache', params), pool, { awsCredentialsFile: credentials });
    await populate(cache);
    await cache.close();
    // A runner killed mid-upload: a multipart upload with one part, never completed.
    const mp = await s3.client.send(new CreateMultipartUploadCommand({ Bucket: 'gc-cache', Key: 'nar/unfinished.nar.xz' }));
    uploadId = mp.UploadId!;
    await s3.client.send(new UploadPartCommand({ Bucket: 'gc-cache', Key: 'nar/unfinished.nar.xz', UploadId: uploadId, PartNumber: 1, Body: Buffer.alloc(1024, 7) }));
    // Live: user (and tree), the CA path (and its realisation). Dead: multi's two outputs, self, single.
    roots = [fx.paths.user, fx.paths.ca];
    storage = await S3Storage.open(parseStoreUri(uri('gc-cache', '')) as S3StoreUri, { credentialsFile: credentials });
    before = await keysOf(storage);
  });

  afterAll(() => storage?.close());

  const run = (o: Partial<CacheGcOptions>) =>
    collectCacheGarbage({ storage, prefix: '', roots: roots.map((p) => basename(p)), minAgeMs: HOUR, dryRun: false, decode, ...o });

  it('deletes nothing younger than --min-age, nor in a dry run, and leaves a recent unfinished upload', async () => {
    const young = await run({});
    expect(young.deleted.count).toBe(0);
    // Every narinfo is young, so each counts as a root: all paths live.
    expect(young.livePaths).toBe((await nixClosure(fx.all)).size);
    expect(young.aborted).toEqual([]);
    expect(young.uploadsInProgress).toBe(1);
    const dry = await run({ dryRun: true, now: new Date(Date.now() + 2 * HOUR) });
    expect(dry.deleted.count).toBeGreaterThan(5);
    expect(dry.aborted.map((u) => u.uploadId)).toEqual([uploadId]);
    expect(await keysOf(storage)).toEqual(before);
    const uploads = await s3.client.send(new ListMultipartUploadsCommand({ Bucket: 'gc-cache' }));
    expect((uploads.Uploads ?? []).map((u) => u.UploadId)).toEqual([uploadId]);
    // The command, with credentials from the environment, reads narinfos stored xz-encoded.
    const rootsDir = join(tmp, 's3-roots');
    writeRoots(rootsDir, roots);
    const r = await runCli(['cache', 'gc', '--store', uri('gc-cache', ''), '--roots-dir', rootsDir, '--dry-run'], {
      AWS_ACCESS_KEY_ID: s3.accessKey,
      AWS_SECRET_ACCESS_KEY: s3.secretKey,
    });
    expect(r.stderr).toBe('');
    expect(r.code).toBe(0);
    expect(r.stdout).toMatch(/^would delete: 0 objects/m);
    expect(r.stdout).toMatch(/^would abort: 0 unfinished multipart uploads older than 1h \(1 younger left alone\)$/m);
    expect(r.stdout).toMatch(new RegExp(`^roots: 2 in .*, 0 of them not in the cache; ${(await nixClosure(fx.all)).size} live paths$`, 'm'));
    expect(await keysOf(storage)).toEqual(before);
  });

  it('deletes exactly the dead objects once they are older, and aborts the unfinished upload', async () => {
    const report = await run({ now: new Date(Date.now() + 2 * HOUR) });
    expect(report.failures).toEqual([]);
    const keep = await expectedKeys(storage, '', roots, before);
    expect(await keysOf(storage)).toEqual(keep);
    expect([...keep].some((k) => k.startsWith('realisations/'))).toBe(true);
    expect(report.deleted.count).toBe(before.size - keep.size);
    expect(report.aborted.map((u) => u.uploadId)).toEqual([uploadId]);
    const uploads = await s3.client.send(new ListMultipartUploadsCommand({ Bucket: 'gc-cache' }));
    expect(uploads.Uploads ?? []).toEqual([]);
  });

  it('deletes nothing when a live narinfo cannot be parsed', async () => {
    const put = (Key: string, Body: string) => s3.client.send(new PutObjectCommand({ Bucket: 'gc-cache', Key, Body }));
    await put(`corrupt/${narInfoFile(fx.paths.self)}`, 'StorePath: not a narinfo\n');
    await put('corrupt/nar/dead.nar', 'dead\n');
    const keys = await keysOf(storage);
    await expect(run({ prefix: 'corrupt/', roots: [basename(fx.paths.self)], now: new Date(Date.now() + 2 * HOUR) })).rejects.toMatchObject({
      code: 'CACHE_GC_UNSAFE',
      key: `corrupt/${narInfoFile(fx.paths.self)}`,
    });
    expect(await keysOf(storage)).toEqual(keys);
  });

  it('under a prefix, touches nothing outside it', async () => {
    // Hydra's backup buckets put a cache under a key prefix: the directory cache's files, copied under cache/.
    await s3.createBucket('gc-prefix');
    const src = join(tmp, 'prefix-src');
    const cache = await BinaryCache.open(`file://${src}?compression=xz&write-nar-listing=1`, pool);
    await populate(cache);
    await cache.close();
    const files = [...snapshot(src).keys()];
    const put = (Key: string, Body: Buffer | string) => s3.client.send(new PutObjectCommand({ Bucket: 'gc-prefix', Key, Body }));
    for (const f of files) await put(`cache/${f}`, readFileSync(join(src, f)));
    const outside = [narInfoFile(fx.paths.self), `cache-old/${narInfoFile(fx.paths.self)}`, 'nar/x.nar'];
    for (const k of outside) await put(k, 'outside the prefix\n');
    const bucket = await S3Storage.open(parseStoreUri(uri('gc-prefix', '')) as S3StoreUri, { credentialsFile: credentials });
    try {
      const all = await keysOf(bucket);
      const report = await collectCacheGarbage({
        storage: bucket, prefix: 'cache/', roots: [basename(fx.paths.multiDev)], minAgeMs: HOUR, dryRun: false, decode, now: new Date(Date.now() + 2 * HOUR),
      });
      const keep = await expectedKeys(bucket, 'cache/', [fx.paths.multiDev], all);
      expect(await keysOf(bucket)).toEqual(new Set([...keep, ...outside]));
      expect(report.deleted.count).toBe(all.size - keep.size - outside.length);
    } finally {
      await bucket.close();
    }
  });
});
