/**
 * What "built" means for a runner that publishes to binary caches: an output
 * is valid only when the runner's store has it AND every cache of
 * `remoteStoreAddr` holds its narinfo. Hydra's C++ runner asks the same of
 * its destination store (`destStore->queryValidPaths`). Without this, a
 * runner killed after importing an output and before its narinfo reached a
 * cache (mid multipart upload, say) finds the output in its store after the
 * restart, counts the step as built and never publishes it: the build
 * succeeds and the cache lacks its output (docs/CACHES.md "A runner killed
 * mid-upload").
 */
import { mapLimit } from '../util/map-limit.ts';
import type { BinaryCache } from './binary-cache.ts';

/** The store as the scheduler reads it (actors/model.ts SchedulerStore, restated here below the actors layer). */
export interface ValidityStore<D> {
  readDerivation(drvPath: string): Promise<D>;
  queryValid(paths: readonly string[]): Promise<Set<string>>;
}

/** Narinfo look-ups in flight at once (present ones are memoised by each cache). */
const LOOKUPS_IN_FLIGHT = 16;

/**
 * `store` with queryValid narrowed to the paths present in every cache too;
 * derivations are read from the store itself. No caches: the store itself.
 */
export function validInCaches<D>(store: ValidityStore<D>, caches: readonly Pick<BinaryCache, 'has'>[]): ValidityStore<D> {
  if (caches.length === 0) return store;
  return {
    readDerivation: (drvPath) => store.readDerivation(drvPath),
    async queryValid(paths) {
      const local = [...(await store.queryValid(paths))];
      const inAll = await mapLimit(local, LOOKUPS_IN_FLIGHT, async (p) => {
        for (const c of caches) if (!(await c.has(p))) return false;
        return true;
      });
      return new Set(local.filter((_, i) => inAll[i]));
    },
  };
}
