/**
 * The directory binary cache against the real Nix 2.8: for each compression,
 * Nix must substitute from what we write (signatures enforced), and what we
 * write must match what `nix copy --to file://…` writes for the same paths.
 */
import { createHash } from 'node:crypto';
import { existsSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { BinaryCache } from '../../src/cache/binary-cache.ts';
import { CACHE_COMPRESSIONS, type CacheCompression } from '../../src/cache/store-uri.ts';
import { uploadClosure } from '../../src/cache/upload.ts';
import { parseHash } from '../../src/nix/hash.ts';
import { parseNarInfo } from '../../src/nix/narinfo.ts';
import { countValidSignatures, parsePublicKey } from '../../src/nix/signing.ts';
import { WorkerPool } from '../../src/workers/pool.ts';
import {
  buildFixtures,
  copyFromCache,
  decompressFile,
  failureOf,
  type Fixtures,
  fieldOrder,
  generateKey,
  narInfoFields,
  nixPathInfo,
  runNix,
  tempDir,
} from './fixtures.ts';

const EXT: Record<CacheCompression, string> = { xz: '.xz', bzip2: '.bz2', br: '.br', zstd: '.zst', none: '' };

let tmp: string;
let pool: WorkerPool;
let fx: Fixtures;
let key: { secretFile: string; publicKey: string };
let otherKey: { secretFile: string; publicKey: string };
/** `nix-store --dump` of every fixture path. */
const nars = new Map<string, Buffer>();

beforeAll(async () => {
  tmp = tempDir('hydrant-cache-');
  pool = new WorkerPool({ threads: 2 });
  [fx, key, otherKey] = await Promise.all([buildFixtures(tmp), generateKey(tmp, 'hydrant-test-1'), generateKey(tmp, 'someone-else-1')]);
  await Promise.all(fx.all.map(async (p) => nars.set(p, (await runNix('nix-store', ['--dump', p])).stdout)));
});

afterAll(async () => {
  await pool?.close();
  rmSync(tmp, { recursive: true, force: true });
});

const sha256File = (file: string) => createHash('sha256').update(readFileSync(file)).digest();

describe.each(CACHE_COMPRESSIONS.map((c) => [c]))('compression=%s', (compression) => {
  let ours: string;
  let theirs: string;
  let cache: BinaryCache;

  beforeAll(async () => {
    ours = join(tmp, `ours-${compression}`);
    theirs = join(tmp, `nix-${compression}`);
    cache = await BinaryCache.open(
      `file://${ours}?compression=${compression}&write-nar-listing=1&secret-key=${key.secretFile}`,
      pool,
    );
    await uploadClosure(cache, fx.all);
    // The same paths written by Nix itself (unsigned: signatures are compared separately).
    await runNix('nix', ['copy', '--to', `file://${theirs}?compression=${compression}&write-nar-listing=1`, ...fx.all]);
  });

  it('lets Nix substitute every path with signatures required, with the same NAR hash', async () => {
    const root = join(tmp, `root-${compression}`);
    await copyFromCache(ours, root, fx.all, key.publicKey);
    const [local, copied] = await Promise.all([nixPathInfo(fx.all), nixPathInfo(fx.all, root)]);
    for (const p of fx.all) {
      expect(copied.get(p)?.narHash, p).toBe(local.get(p)!.narHash);
      expect(copied.get(p)?.references.sort(), p).toEqual(local.get(p)!.references.sort());
    }
  });

  it('writes narinfos that agree with the store and describe the file at URL', async () => {
    const local = await nixPathInfo(fx.all);
    const pk = parsePublicKey(key.publicKey);
    await Promise.all(fx.all.map(async (p) => {
      const info = (await cache.readNarInfo(p))!;
      const want = local.get(p)!;
      expect(info.storePath).toBe(p);
      expect(info.compression).toBe(compression);
      expect(info.narHash.equals(parseHash(want.narHash))).toBe(true);
      expect(info.narSize).toBe(want.narSize);
      expect(info.references.map((r) => `/nix/store/${r}`).sort()).toEqual([...want.references].sort());
      expect(info.deriver && `/nix/store/${info.deriver}`).toBe(want.deriver);
      expect(info.ca).toBe(want.ca);
      const file = join(ours, info.url);
      expect(info.url).toBe(`nar/${info.fileHash!.toBase32()}.nar${EXT[compression]}`);
      expect(Buffer.from(info.fileHash!.bytes).equals(sha256File(file))).toBe(true);
      expect(info.fileSize).toBe(readFileSync(file).length);
      // The reference tool decompresses it to exactly the NAR Nix dumps.
      expect((await decompressFile(file, compression)).equals(nars.get(p)!)).toBe(true);
      expect(countValidSignatures([pk], { ...info, references: info.references.map((r) => `/nix/store/${r}`) }, info.sigs)).toBe(1);
    }));
  });

  it("matches Nix's own narinfos field by field, in Nix's field order", () => {
    for (const p of fx.all) {
      const name = `${p.slice('/nix/store/'.length, '/nix/store/'.length + 32)}.narinfo`;
      const a = readFileSync(join(ours, name), 'utf8');
      const b = readFileSync(join(theirs, name), 'utf8');
      // Nix's order, with our Sig where Nix puts it when signing (before CA).
      const order = fieldOrder(b);
      order.splice(order.includes('CA') ? order.indexOf('CA') : order.length, 0, 'Sig');
      expect(fieldOrder(a)).toEqual(order);
      const fa = narInfoFields(a);
      const fb = narInfoFields(b);
      fa.delete('Sig');
      // Different compressor builds may produce different bytes; without compression the file is the NAR itself.
      if (compression !== 'none') for (const f of ['URL', 'FileHash', 'FileSize']) (fa.delete(f), fb.delete(f));
      expect(Object.fromEntries(fa), p).toEqual(Object.fromEntries(fb));
    }
  });

  it("lays files out as Nix does: same nix-cache-info, narinfo and listing names, same listings", () => {
    expect(readFileSync(join(ours, 'nix-cache-info'), 'utf8')).toBe(readFileSync(join(theirs, 'nix-cache-info'), 'utf8'));
    const top = (d: string) => readdirSync(d).filter((f) => f.endsWith('.narinfo') || f.endsWith('.ls')).sort();
    expect(top(ours)).toEqual(top(theirs));
    for (const f of top(ours).filter((n) => n.endsWith('.ls'))) {
      expect(readFileSync(join(ours, f), 'utf8'), f).toBe(readFileSync(join(theirs, f), 'utf8'));
    }
    const nars = (d: string) => readdirSync(join(d, 'nar')).map((f) => f.replace(/^[0-9a-z]{52}/, 'H')).sort();
    expect(nars(ours)).toEqual(nars(theirs));
    // No temporary file is left behind.
    expect(readdirSync(ours).filter((f) => f.startsWith('.'))).toEqual([]);
    expect(readdirSync(join(ours, 'nar')).filter((f) => f.startsWith('.'))).toEqual([]);
  });
});

describe('signatures', () => {
  it('Nix refuses the cache when it trusts a different key', async () => {
    const dir = join(tmp, 'signed');
    const cache = await BinaryCache.open(`file://${dir}?compression=zstd&secret-key=${key.secretFile}`, pool);
    await uploadClosure(cache, [fx.paths.user]);
    const err = await failureOf(copyFromCache(dir, join(tmp, 'root-wrong-key'), [fx.paths.user], otherKey.publicKey));
    expect(err.stderr).toMatch(/lacks a valid signature/);
    expect(cache.publicKey).toBe(key.publicKey);
  });

  it('an unsigned cache is refused when signatures are required', async () => {
    const dir = join(tmp, 'unsigned');
    const cache = await BinaryCache.open(`file://${dir}?compression=none`, pool);
    await uploadClosure(cache, [fx.paths.single]);
    expect(cache.publicKey).toBeUndefined();
    expect((await cache.readNarInfo(fx.paths.single))!.sigs).toEqual([]);
    const err = await failureOf(copyFromCache(dir, join(tmp, 'root-unsigned'), [fx.paths.single], key.publicKey));
    expect(err.stderr).toMatch(/lacks a valid signature/);
  });
});

describe('listing compression', () => {
  it('compresses .ls files per ls-compression; they decompress to Nix\'s listing', async () => {
    const dir = join(tmp, 'ls-br');
    const cache = await BinaryCache.open(`file://${dir}?compression=none&write-nar-listing=1&ls-compression=br`, pool);
    await uploadClosure(cache, [fx.paths.tree]);
    const name = `${fx.paths.tree.slice(11, 43)}.ls`;
    const nixDir = join(tmp, 'nix-ls');
    await runNix('nix', ['copy', '--to', `file://${nixDir}?compression=none&write-nar-listing=1`, fx.paths.tree]);
    const nixListing = readFileSync(join(nixDir, name), 'utf8');
    expect((await decompressFile(join(dir, name), 'br')).toString('utf8')).toBe(nixListing);
    expect(parseNarInfo(readFileSync(join(dir, `${fx.paths.tree.slice(11, 43)}.narinfo`), 'utf8')).compression).toBe('none');
    expect(existsSync(join(dir, `${fx.paths.user.slice(11, 43)}.ls`))).toBe(false);
  });
});
