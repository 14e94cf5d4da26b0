/**
 * Upload rules against the real local store: write-once, references first,
 * single-flight, nothing published on a hash mismatch, logs, realisations.
 */
import { execFileSync } from 'node:child_process';
import { readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { BinaryCache, type PathUpload } from '../../src/cache/binary-cache.ts';
import { queryPathInfos } from '../../src/cache/local-path-info.ts';
import { type ClosureUpload, uploadClosure } from '../../src/cache/upload.ts';
import { CacheReferenceMissingError, NarHashMismatchError, PathNotInStoreError } from '../../src/errors/index.ts';
import { sha256 } from '../../src/nix/hash.ts';
import { WorkerPool } from '../../src/workers/pool.ts';
import { formatRealisation, parseRealisation, realisationSignedBy } from '../../src/nix/realisation.ts';
import { parsePublicKey } from '../../src/nix/signing.ts';
import { buildFixtures, decompressFile, type Fixtures, generateKey, runNix, snapshot, tempDir } from './fixtures.ts';

let tmp: string;
let pool: WorkerPool;
let fx: Fixtures;
let key: { secretFile: string; publicKey: string };
let n = 0;

beforeAll(async () => {
  tmp = tempDir('hydrant-upload-');
  pool = new WorkerPool({ threads: 2 });
  [fx, key] = await Promise.all([buildFixtures(tmp), generateKey(tmp, 'hydrant-upload-1')]);
});

afterAll(async () => {
  await pool?.close();
  rmSync(tmp, { recursive: true, force: true });
});

/** A fresh, empty cache. */
async function freshCache(params = 'compression=zstd'): Promise<{ dir: string; cache: BinaryCache }> {
  const dir = join(tmp, `cache-${++n}`);
  const cache = await BinaryCache.open(`file://${dir}?${params}&secret-key=${key.secretFile}`, pool);
  return { dir, cache };
}

/** Files of a cache other than its nix-cache-info. */
function contents(dir: string): string[] {
  return [...snapshot(dir).keys()].filter((f) => f !== 'nix-cache-info').sort();
}

describe('uploadClosure', () => {
  it('uploads the closure references first, then nothing the second time', async () => {
    const { dir, cache } = await freshCache('compression=xz&write-nar-listing=1');
    const first = await uploadClosure(cache, [fx.paths.user, fx.paths.multiDev, fx.paths.ca, fx.paths.self]);
    const closure = await queryPathInfos([fx.paths.user, fx.paths.multiDev, fx.paths.ca, fx.paths.self], { recursive: true });
    expect(first.uploaded.map((u) => u.storePath).sort()).toEqual(closure.map((i) => i.path).sort());
    expect(first.skipped).toEqual([]);

    // References first: in the order of publication and in the narinfos' mtimes.
    const order = first.uploaded.map((u) => u.storePath);
    const mtimes = snapshot(dir);
    const narinfoTime = (p: string) => mtimes.get(`${p.slice(11, 43)}.narinfo`)!;
    for (const info of closure) {
      for (const ref of info.references.filter((r) => r !== info.path)) {
        expect(order.indexOf(ref), `${ref} before ${info.path}`).toBeLessThan(order.indexOf(info.path));
        expect(narinfoTime(ref) <= narinfoTime(info.path)).toBe(true);
      }
    }
    // Each NAR's file is no later than its narinfo.
    for (const u of first.uploaded) expect(mtimes.get(u.narInfo!.url)! <= narinfoTime(u.storePath)).toBe(true);

    const second = await uploadClosure(cache, [fx.paths.user, fx.paths.multiDev, fx.paths.ca, fx.paths.self]);
    expect(second.uploaded).toEqual([]);
    // The cache has the paths asked for, so their closures too: nothing else is looked at.
    expect(second.skipped.sort()).toEqual([fx.paths.user, fx.paths.multiDev, fx.paths.ca, fx.paths.self].sort());
    expect(snapshot(dir)).toEqual(mtimes);
  });

  it('skips what the cache has and uploads only the rest', async () => {
    const { cache } = await freshCache();
    await uploadClosure(cache, [fx.paths.tree]);
    const r = await uploadClosure(cache, [fx.paths.user]);
    expect(r.skipped).toEqual([fx.paths.tree]);
    expect(r.uploaded.map((u) => u.storePath)).toEqual([fx.paths.user]);
    expect(r.uploaded[0]!.narSize).toBeGreaterThan(0);
  });

  it('fails on a path the store does not have, writing nothing', async () => {
    const { dir, cache } = await freshCache();
    const bogus = '/nix/store/00000000000000000000000000000000-not-there';
    await expect(uploadClosure(cache, [fx.paths.single, bogus])).rejects.toBeInstanceOf(PathNotInStoreError);
    await expect(cache.uploadPath(bogus)).rejects.toBeInstanceOf(PathNotInStoreError);
    expect(contents(dir)).toEqual([]);
  });
});

describe('BinaryCache', () => {
  it('uploads a path once when asked for it concurrently', async () => {
    const { dir, cache } = await freshCache();
    let writes = 0;
    const writeNar = pool.writeNar.bind(pool);
    pool.writeNar = (...args) => (writes++, writeNar(...args));
    try {
      const results = await Promise.all([
        ...Array.from({ length: 5 }, () => cache.uploadPath(fx.paths.tree)),
        uploadClosure(cache, [fx.paths.tree]),
        uploadClosure(cache, [fx.paths.user]),
      ]);
      // One caller reports the upload; the others share its outcome as "already there".
      const forTree = [...results.slice(0, 5), ...(results.slice(5) as ClosureUpload[]).flatMap((r) => r.uploaded)].filter(
        (r) => 'storePath' in r && r.storePath === fx.paths.tree && r.uploaded,
      );
      expect(forTree).toHaveLength(1);
      for (const r of results.slice(0, 5) as PathUpload[]) expect(r.narInfo?.url).toBe((results[0] as PathUpload).narInfo?.url);
    } finally {
      pool.writeNar = writeNar;
    }
    expect(writes).toBe(2); // tree once, user once
    expect(contents(dir).filter((f) => f.startsWith('nar/'))).toHaveLength(2);
  });

  it('refuses a narinfo whose references the cache lacks', async () => {
    const { dir, cache } = await freshCache();
    const err = await cache.uploadPath(fx.paths.user).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(CacheReferenceMissingError);
    expect((err as CacheReferenceMissingError).missing).toEqual([fx.paths.tree]);
    expect(contents(dir)).toEqual([]);
    // A self-reference needs nothing else.
    expect((await cache.uploadPath(fx.paths.self)).uploaded).toBe(true);
  });

  it('publishes nothing when the NAR read differs from what the store recorded', async () => {
    const { dir, cache } = await freshCache('compression=xz&write-nar-listing=1');
    const [info] = await queryPathInfos([fx.paths.tree]);
    const wrongHash = { ...info!, narHash: sha256('not the nar') };
    const err = await cache.publish(wrongHash).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(NarHashMismatchError);
    expect((err as NarHashMismatchError).code).toBe('NAR_HASH_MISMATCH');
    expect(String(err)).toContain(fx.paths.tree);
    await expect(cache.publish({ ...info!, narSize: info!.narSize + 8 })).rejects.toBeInstanceOf(NarHashMismatchError);
    expect(contents(dir)).toEqual([]);
    expect(await cache.has(fx.paths.tree)).toBe(false);
    // The real metadata still goes through afterwards.
    expect((await cache.publish(info!)).uploaded).toBe(true);
  });

  it('publishes over a NAR file of the same name, and into a nar/ directory removed after open', async () => {
    const { dir, cache } = await freshCache();
    // A NAR left by another runner (or a run that died before its narinfo): same name, same bytes.
    const first = await cache.uploadPath(fx.paths.tree);
    const narFile = join(dir, first.narInfo!.url);
    const narBytes = readFileSync(narFile);
    rmSync(join(dir, `${fx.paths.tree.slice(11, 43)}.narinfo`));
    const again = await BinaryCache.open(`file://${dir}?compression=zstd&secret-key=${key.secretFile}`, pool);
    const second = await again.uploadPath(fx.paths.tree);
    expect(second.uploaded).toBe(true);
    expect(second.narInfo!.url).toBe(first.narInfo!.url);
    expect(readFileSync(narFile).equals(narBytes)).toBe(true);
    // No temporary file is left beside it.
    expect(readdirSync(join(dir, 'nar')).filter((f) => f.startsWith('.'))).toEqual([]);

    // The storage makes nar/ once; one removed since (by hand, say) is made again.
    rmSync(join(dir, 'nar'), { recursive: true });
    const third = await again.uploadPath(fx.paths.single);
    expect(third.uploaded).toBe(true);
    expect(readdirSync(join(dir, 'nar'))).toEqual([third.narInfo!.url.slice('nar/'.length)]);
  });

  it('keeps an existing nix-cache-info and writes the configured extras in a new one', async () => {
    const dir = join(tmp, 'info');
    await BinaryCache.open(`file://${dir}?want-mass-query=1&priority=30`, pool);
    expect(readFileSync(join(dir, 'nix-cache-info'), 'utf8')).toBe('StoreDir: /nix/store\nWantMassQuery: 1\nPriority: 30\n');
    await BinaryCache.open(`file://${dir}`, pool);
    expect(readFileSync(join(dir, 'nix-cache-info'), 'utf8')).toBe('StoreDir: /nix/store\nWantMassQuery: 1\nPriority: 30\n');
    writeFileSync(join(dir, 'nix-cache-info'), 'StoreDir: /gnu/store\n');
    await expect(BinaryCache.open(`file://${dir}`, pool)).rejects.toThrow(/\/gnu\/store/);
  });
});

describe('build logs', () => {
  it("uploads Nix's own build log as `nix store copy-log` does, once", async () => {
    const { dir, cache } = await freshCache();
    const base = fx.drvs.tree.slice(11);
    // Nix keeps local logs bzip2-compressed under /nix/var/log/nix/drvs/<2 chars>/<rest>.bz2.
    const local = `/nix/var/log/nix/drvs/${base.slice(0, 2)}/${base.slice(2)}.bz2`;
    expect(await cache.uploadLog(fx.drvs.tree, local)).toBe(true);
    const nixDir = join(tmp, 'nix-log');
    await runNix('nix', ['store', 'copy-log', '--to', `file://${nixDir}`, fx.drvs.tree]);
    const ours = readFileSync(join(dir, 'log', base));
    expect(ours.toString('utf8')).toContain('building tree');
    expect(ours.equals(readFileSync(join(nixDir, 'log', base)))).toBe(true);

    const before = snapshot(dir);
    const other = join(tmp, 'plain.log');
    writeFileSync(other, 'something else\n');
    expect(await cache.uploadLog(fx.drvs.tree, other)).toBe(false);
    expect(snapshot(dir)).toEqual(before);
  });

  it("compresses per log-compression, reading Nix's bzip2 logs", async () => {
    const { dir, cache } = await freshCache('log-compression=br');
    const text = 'a log line\n'.repeat(1000);
    const log = join(tmp, 'nix-style.drv.bz2');
    writeFileSync(log, execFileSync('bzip2', ['-c'], { input: text }));
    expect(await cache.uploadLog(fx.drvs.user, log)).toBe(true);
    const stored = join(dir, `log/${fx.drvs.user.slice(11)}`);
    expect((await decompressFile(stored, 'br')).toString('utf8')).toBe(text);
    expect(readFileSync(stored).length).toBeLessThan(text.length / 10);
  });
});

describe('realisations', () => {
  it('writes the .doi files Nix writes, signed with the cache key, only once the output is cached', async () => {
    const { dir, cache } = await freshCache();
    await expect(cache.uploadRealisations(fx.drvs.ca)).rejects.toBeInstanceOf(CacheReferenceMissingError);
    expect(contents(dir)).toEqual([]);
    await uploadClosure(cache, [fx.paths.ca]);
    const ids = await cache.uploadRealisations(fx.drvs.ca);
    // The CA output's own realisation and that of the input it depends on.
    expect(ids).toHaveLength(2);
    expect(await cache.uploadRealisations(fx.drvs.ca)).toEqual([]);

    const nixDir = join(tmp, 'nix-realisations');
    await runNix('nix', ['copy', '--to', `file://${nixDir}?compression=zstd`, '--file', fx.exprFile, 'ca']);
    const theirs = readdirSync(join(nixDir, 'realisations')).sort();
    expect(readdirSync(join(dir, 'realisations')).sort()).toEqual(theirs);
    const pk = parsePublicKey(key.publicKey);
    for (const f of theirs) {
      const ours = parseRealisation(readFileSync(join(dir, 'realisations', f), 'utf8'));
      const nix = parseRealisation(readFileSync(join(nixDir, 'realisations', f), 'utf8'));
      // Nix's body, plus the cache's signature over it.
      expect(ours).toEqual({ ...nix, signatures: ours.signatures });
      expect(ours.signatures).toHaveLength(1);
      expect(realisationSignedBy([pk], ours)).toBe(true);
      expect(readFileSync(join(dir, 'realisations', f), 'utf8')).toBe(formatRealisation(ours));
    }
  });
});
