import { HydrantError } from './hydrant-error.ts';

/**
 * A binary cache entry (narinfo or realisation) would refer to store paths
 * the cache does not hold: a client substituting it would fail halfway, so
 * the entry is not written. Upload the references first.
 */
export class CacheReferenceMissingError extends HydrantError {
  readonly code = 'CACHE_REFERENCE_MISSING';
  constructor(
    readonly entry: string,
    readonly missing: readonly string[],
  ) {
    super(`refusing to publish ${entry}: the cache lacks ${missing.length === 1 ? 'its reference' : `${missing.length} references`} ${missing.slice(0, 5).join(', ')}${missing.length > 5 ? ', …' : ''}`);
  }
}
