import { rmSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { BinaryCache } from '../../src/cache/binary-cache.ts';
import { Substituter } from '../../src/cache/substituter.ts';
import { uploadClosure } from '../../src/cache/upload.ts';
import { PrivateStore } from '../../src/nix/private-store.ts';
import { createLogger } from '../../src/util/logger.ts';
import { WorkerPool } from '../../src/workers/pool.ts';
import { buildFixtures, generateKey, tempDir, type Fixtures } from './fixtures.ts';
import { serveDirectory, type DirectoryServer } from '../helpers/directory-server.ts';

/**
 * The Substituter against a real HTTP cache (a directory published by
 * Hydrant's own cache code, served by node:http, every request counted) into
 * a private store: closures come in verified, and narinfo look-ups are asked
 * once per path while their TTL lasts, found and missing alike.
 */
let tmp: string;
let pool: WorkerPool;
let fx: Fixtures;
let server: DirectoryServer;
let url: string;
const requests = new Map<string, number>();
let publicKey: string;

beforeAll(async () => {
  tmp = tempDir('hydrant-subst-');
  pool = new WorkerPool({ threads: 2 });
  let key: { secretFile: string; publicKey: string };
  [fx, key] = await Promise.all([buildFixtures(tmp), generateKey(tmp, 'hydrant-subst-1')]);
  publicKey = key.publicKey;
  const dir = join(tmp, 'cache');
  const cache = await BinaryCache.open(`file://${dir}?compression=zstd&secret-key=${key.secretFile}`, pool);
  await uploadClosure(cache, [fx.paths.user, fx.paths.tree]);
  await cache.close();
  server = await serveDirectory(dir, {
    seen: (u) => {
      const rel = decodeURIComponent(u.slice(1));
      requests.set(rel, (requests.get(rel) ?? 0) + 1);
    },
  });
  url = server.url;
});

afterAll(async () => {
  await server?.close();
  await pool?.close();
  rmSync(tmp, { recursive: true, force: true });
});

async function open(store: PrivateStore, now: () => number): Promise<Substituter> {
  return Substituter.open({
    urls: [url], trustedPublicKeys: [publicKey], pool, store, log: createLogger({ level: 'silent' }), now,
    positiveTtlMs: 60_000, negativeTtlMs: 10_000,
    queryValid: async (paths) => {
      const r = await store.run('nix-store', ['--check-validity', '--print-invalid', ...paths]);
      const invalid = new Set(r.stdout.toString('utf8').split('\n').filter(Boolean));
      return new Set(paths.filter((p) => !invalid.has(p)));
    },
  });
}

const narinfo = (p: string) => `${p.slice('/nix/store/'.length, '/nix/store/'.length + 32)}.narinfo`;

describe('Substituter', () => {
  it('brings a closure into a store verified, and asks for each narinfo once per TTL', async () => {
    const store = await PrivateStore.create(join(tmp, 'store'));
    let now = 1_000_000;
    const s = await open(store, () => now);
    // user refers to tree: both come, tree first.
    expect(await s.substitute([fx.paths.user])).toBe(true);
    const r = await store.run('nix-store', ['--check-validity', '--print-invalid', fx.paths.user, fx.paths.tree]);
    expect(r.stdout.toString('utf8')).toBe('');
    expect(requests.get(narinfo(fx.paths.user))).toBe(1);
    expect(requests.get(narinfo(fx.paths.tree))).toBe(1);

    // A path in no cache: false, and the miss is remembered for the negative TTL.
    const before = requests.get(narinfo(fx.paths.single)) ?? 0;
    expect(await s.substitute([fx.paths.single])).toBe(false);
    expect(await s.substitute([fx.paths.single])).toBe(false);
    await Promise.all([s.lookup(fx.paths.single), s.lookup(fx.paths.single)]);
    expect(requests.get(narinfo(fx.paths.single))).toBe(before + 1);
    now += 10_001;
    expect(await s.lookup(fx.paths.single)).toBeNull();
    expect(requests.get(narinfo(fx.paths.single))).toBe(before + 2);

    // Found ones are remembered for the positive TTL: look-ups from many steps cost one request.
    await Promise.all(Array.from({ length: 20 }, () => s.lookup(fx.paths.user)));
    expect(requests.get(narinfo(fx.paths.user))).toBe(1);
    await s.close();
  });
});
