import { NixFormatError, PathNotInStoreError } from '../errors/index.ts';

/**
 * Why a queued build could not be loaded, if the cause is permanent: its
 * drvPath is not a store derivation path, a .drv (its own or a dependency's)
 * does not parse or is not a regular file, or a .drv is missing. The runner
 * has no substituter for derivations (neither has Hydra: it only checks
 * local validity), so a missing .drv never comes back by itself. Returns
 * null for anything else (worker pool closed or full, a Nix or database
 * error, EIO, EMFILE, …): those are transient and the build stays queued.
 */
export function permanentLoadFailure(err: unknown): string | null {
  if (err instanceof NixFormatError) return err.message;
  if (err instanceof PathNotInStoreError) return `derivation missing: ${err.message}`;
  return null;
}
