import { hostStore } from '../nix/private-store.ts';
import { servePool } from '../nix/serve-session.ts';

/**
 * The closure, in the local store, of those of `paths` it holds (the others
 * are skipped, not errors). `hydrant cache gc` follows roots the cache lacks
 * through it: their references may be in the cache, and an upload in
 * progress (the runner roots outputs before it uploads them) refers to
 * paths the cache holds before its narinfo says so.
 */
export async function localClosure(paths: readonly string[]): Promise<string[]> {
  const unique = [...new Set(paths)];
  if (unique.length === 0) return [];
  return servePool(hostStore).use(async (session) => {
    const valid = await session.queryValid(unique);
    return valid.length === 0 ? [] : session.queryClosure(valid, false);
  });
}
