import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import type { StepRecord } from '../../src/actors/model.ts';
import type { Prepared } from '../../src/actors/prepare-step.ts';
import { localStoreOnly, SubstitutingPreparer } from '../../src/actors/substituting-preparer.ts';
import { validInCaches } from '../../src/cache/cache-valid-store.ts';
import { quietLog } from '../helpers/runtime.ts';

/**
 * The publishing invariant of SubstitutingPreparer (docs/SUBSTITUTION.md,
 * "Publishing"), over any mix of outputs valid in the store and in the
 * caches, substitution outcomes and publishing outcomes: a step is answered
 * `substituted` only after every output was published (rooted, closure in
 * every cache) with success; a failed publication builds it; a step whose
 * outputs are in the store and every cache is left to the next preparer
 * with nothing published; one in the store but missing from a cache (a
 * runner killed before its upload) is published, not counted built.
 */
const NEXT = 'next' as unknown as Prepared;

describe('SubstitutingPreparer publishing', () => {
  it('answers substituted only once every output is published', async () => {
    const output = fc.record({ inStore: fc.boolean(), inCaches: fc.boolean() });
    await fc.assert(
      fc.asyncProperty(
        fc.array(output, { minLength: 1, maxLength: 4 }),
        fc.constantFrom('fetched', 'miss', 'refused'),
        fc.boolean(),
        async (outs, substitution, publishFails) => {
          const paths = outs.map((_, i) => `/nix/store/${String(i).repeat(32)}-out${i}`);
          const store = new Set(paths.filter((_, i) => outs[i]!.inStore));
          const cached = new Set(paths.filter((_, i) => outs[i]!.inStore && outs[i]!.inCaches));
          const events: string[] = [];
          const local = { readDerivation: () => Promise.reject(new Error('unused')), queryValid: async (ps: readonly string[]) => new Set(ps.filter((p) => store.has(p))) };
          const preparer = new SubstitutingPreparer({
            substituter: {
              async substitute(ps) {
                events.push(`substitute ${ps.length}`);
                if (substitution === 'refused') throw new Error('no trusted signature');
                if (substitution === 'miss' && ps.some((p) => !store.has(p))) return false;
                for (const p of ps) store.add(p);
                return true;
              },
            },
            next: { prepare: () => (events.push('next'), NEXT) },
            valid: validInCaches(local, [{ has: async (p: string) => cached.has(p) }]),
            publish: async (ps) => {
              events.push('publish');
              expect([...ps].sort()).toEqual([...paths].sort());
              for (const p of ps) expect(store.has(p)).toBe(true);
              if (publishFails) throw new Error('cache away');
              for (const p of ps) cached.add(p);
            },
            clock: { now: () => 1_000_000 },
            log: quietLog,
          });
          const step = { drvPath: '/nix/store/x-step.drv', outputs: paths.map((path, i) => ({ name: `out${i}`, path })) } as unknown as StepRecord;
          const r = await preparer.prepare(step);

          const builtBefore = outs.every((o) => o.inStore && o.inCaches);
          if (builtBefore) {
            expect(r).toBe(NEXT);
            expect(events).toEqual(['next']);
            return;
          }
          const missing = paths.filter((p) => !cached.has(p) || publishFails);
          if (substitution === 'refused') return void expect([r, events.includes('publish')]).toEqual(['dispatch', false]);
          const fetchable = substitution === 'fetched' || outs.every((o) => o.inStore);
          if (!fetchable) return void expect([r, events.includes('publish')]).toEqual([NEXT, false]);
          if (publishFails) return void expect([r, events.at(-1)]).toEqual(['dispatch', 'publish']);
          expect(missing).toEqual([]);
          expect(events.at(-1)).toBe('publish');
          expect(r).toMatchObject({ kind: 'substituted' });
          const s = r as Extract<Prepared, { kind: 'substituted' }>;
          // Type-1 rows for every output that was not built before: fetched, or copied from the store to the caches (Hydra's C++ runner).
          expect(s.substituted.map((o) => o.path)).toEqual(paths.filter((_, i) => !(outs[i]!.inStore && outs[i]!.inCaches)));
          expect(s.outputs.map((o) => o.path)).toEqual(paths);
        },
      ),
      { numRuns: 200 },
    );
  });

  // useSubstitutes = false (docs/SUBSTITUTION.md, "Without useSubstitutes"): the store is the only source.
  it('without substituters, publishes outputs the store holds and leaves the rest to the next preparer', async () => {
    const output = fc.record({ inStore: fc.boolean(), inCaches: fc.boolean() });
    await fc.assert(
      fc.asyncProperty(fc.array(output, { minLength: 1, maxLength: 4 }), async (outs) => {
        const paths = outs.map((_, i) => `/nix/store/${String(i).repeat(32)}-out${i}`);
        const store = new Set(paths.filter((_, i) => outs[i]!.inStore));
        const cached = new Set(paths.filter((_, i) => outs[i]!.inStore && outs[i]!.inCaches));
        const local = { readDerivation: () => Promise.reject(new Error('unused')), queryValid: async (ps: readonly string[]) => new Set(ps.filter((p) => store.has(p))) };
        const published: string[][] = [];
        const preparer = new SubstitutingPreparer({
          substituter: localStoreOnly(local),
          next: { prepare: () => NEXT },
          valid: validInCaches(local, [{ has: async (p: string) => cached.has(p) }]),
          publish: async (ps) => void published.push([...ps]),
          clock: { now: () => 1_000_000 },
          log: quietLog,
        });
        const step = { drvPath: '/nix/store/x-step.drv', outputs: paths.map((path, i) => ({ name: `out${i}`, path })) } as unknown as StepRecord;
        const r = await preparer.prepare(step);
        const allInStore = outs.every((o) => o.inStore);
        const allCached = outs.every((o) => o.inStore && o.inCaches);
        if (allCached || !allInStore) {
          // Built already, or something only a build (or a substituter, not asked here) can give: nothing published.
          expect([r, published]).toEqual([NEXT, []]);
          return;
        }
        expect(published).toEqual([paths]);
        expect(r).toMatchObject({ kind: 'substituted', outputs: paths.map((path, i) => ({ name: `out${i}`, path })) });
        expect(store.size).toBe(paths.length); // nothing was fetched: the store holds what it held
      }),
      { numRuns: 200 },
    );
  });
});
