import { HydrantError } from './hydrant-error.ts';

/**
 * A path supplied by a build (e.g. in nix-support/hydra-build-products)
 * points outside the directory it must stay in: `..` traversal, an absolute
 * path elsewhere, or a symlink that escapes. Builds are untrusted input.
 */
export class UnsafePathError extends HydrantError {
  readonly code = 'UNSAFE_PATH';
  constructor(
    readonly path: string,
    readonly reason: string,
  ) {
    super(`unsafe path '${path}': ${reason}`);
  }
}
