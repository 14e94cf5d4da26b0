import { ConfigError } from '../errors/index.ts';
import type { WorkerPool } from '../workers/pool.ts';
import { FileBinaryCache } from './file-cache.ts';
import { parseStoreUri } from './store-uri.ts';

/** Opens the binary caches of `remoteStoreAddr`; one ConfigError names the first that cannot be used. */
export async function openCaches(uris: readonly string[], pool: WorkerPool): Promise<FileBinaryCache[]> {
  const caches: FileBinaryCache[] = [];
  for (const uri of uris) {
    const store = parseStoreUri(uri);
    if (store.scheme !== 'file') throw new ConfigError(`remoteStoreAddr '${store.uri}': only file:// binary caches are supported by this version`);
    caches.push(await FileBinaryCache.open(store, pool));
  }
  return caches;
}
