/** PrefixedStorage: a backup bucket's `prefix` in front of every key, and only there. */
import { mkdtempSync, readdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { DirectoryStorage } from '../../src/cache/directory-storage.ts';
import { PrefixedStorage } from '../../src/cache/prefixed-storage.ts';
import type { CacheStorage } from '../../src/cache/storage.ts';

const dir = mkdtempSync(join(tmpdir(), 'hydrant-prefixed-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

describe('PrefixedStorage', () => {
  it('stores, reads, lists and deletes under its prefix only', async () => {
    const inner: CacheStorage = await DirectoryStorage.open(dir, { fsync: false, dirs: ['cache', 'cache/nar'] });
    const s = new PrefixedStorage(inner, 'cache/');
    expect(s.location).toBe(`${dir}/cache/`);
    expect(await s.put('a.narinfo', 'A', { contentType: 'text/x-nix-narinfo' })).toBe(true);
    expect(await s.put('a.narinfo', 'B', { contentType: 'text/x-nix-narinfo' })).toBe(false);
    expect(await s.put('nar/x.nar', 'X', { contentType: 'application/x-nix-nar' })).toBe(true);
    expect(await inner.put('outside', 'O', { contentType: 'text/plain' })).toBe(true);
    expect(readdirSync(join(dir, 'cache')).sort()).toEqual(['a.narinfo', 'nar']);
    expect((await s.get('a.narinfo'))?.body.toString()).toBe('A');
    expect(await s.has('outside')).toBe(false);
    const keys: string[] = [];
    for await (const e of s.list('')) keys.push(e.key);
    expect(keys.sort()).toEqual(['a.narinfo', 'nar/x.nar']);
    await s.delete('a.narinfo');
    expect(await s.has('a.narinfo')).toBe(false);
    expect(await inner.has('outside')).toBe(true);
  });
});
