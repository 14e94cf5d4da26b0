import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { validInCaches } from '../../src/cache/cache-valid-store.ts';

/** A store's validity and the caches' contents as sets: valid-in-caches is the intersection of them all. */
describe('validInCaches', () => {
  const path = fc.integer({ min: 0, max: 30 }).map((i) => `/nix/store/${String(i).padStart(32, 'a')}-p`);

  it('answers the paths valid in the store and present in every cache, and reads derivations from the store', async () => {
    await fc.assert(
      fc.asyncProperty(fc.uniqueArray(path), fc.uniqueArray(path), fc.array(fc.uniqueArray(path), { maxLength: 3 }), async (asked, valid, caches) => {
        const store = {
          queryValid: async (paths: readonly string[]) => new Set(paths.filter((p) => valid.includes(p))),
          readDerivation: async (drvPath: string) => ({ read: drvPath }),
        };
        const looked: string[] = [];
        const wrapped = validInCaches(
          store,
          caches.map((c) => ({ has: async (p: string) => (looked.push(p), c.includes(p)) })),
        );
        const want = asked.filter((p) => valid.includes(p) && caches.every((c) => c.includes(p)));
        expect([...(await wrapped.queryValid(asked))].sort()).toEqual(want.sort());
        // Only paths the store has are looked up in the caches.
        expect(looked.every((p) => valid.includes(p))).toBe(true);
        expect(await wrapped.readDerivation('/nix/store/x.drv')).toEqual({ read: '/nix/store/x.drv' });
        if (caches.length === 0) expect(wrapped).toBe(store);
      }),
    );
  });
});
