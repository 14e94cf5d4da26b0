import type { WorkerPool } from '../workers/pool.ts';
import { BinaryCache } from './binary-cache.ts';
import { parseStoreUri } from './store-uri.ts';

export interface OpenCachesOptions {
  /** A shared AWS credentials file for s3:// caches (config key awsCredentialsFile). */
  awsCredentialsFile?: string | undefined;
}

/**
 * Opens the binary caches of `remoteStoreAddr`, each probed at once (an S3
 * bucket is read): the first that cannot be used fails the start with one
 * error naming it. Caches opened before it are closed.
 */
export async function openCaches(uris: readonly string[], pool: WorkerPool, options: OpenCachesOptions = {}): Promise<BinaryCache[]> {
  const caches: BinaryCache[] = [];
  try {
    for (const uri of uris) caches.push(await BinaryCache.open(parseStoreUri(uri), pool, { awsCredentialsFile: options.awsCredentialsFile }));
  } catch (e) {
    await Promise.all(caches.map((c) => c.close()));
    throw e;
  }
  return caches;
}
