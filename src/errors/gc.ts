import { errorKind } from './hydrant-error.ts';

/**
 * The GC roots directory cannot be read (missing, not a directory, no
 * permission). `hydrant cache gc` stops rather than treat it as empty, which
 * would delete the whole cache.
 */
export class GcRootsDirError extends errorKind('GC_ROOTS_DIR') {
  constructor(
    readonly dir: string,
    reason: string,
    options?: { cause?: unknown },
  ) {
    super(`GC roots directory ${dir}: ${reason}`, options);
  }
}

/**
 * An object the live closure depends on cannot be read or parsed (a corrupt
 * narinfo of a live path): what it keeps alive is unknown, so nothing is
 * deleted.
 */
export class CacheGcUnsafeError extends errorKind('CACHE_GC_UNSAFE') {
  constructor(
    readonly location: string,
    readonly key: string,
    reason: string,
    options?: { cause?: unknown },
  ) {
    super(`${location}: cannot read ${key} (${reason}); nothing was deleted`, options);
  }
}
