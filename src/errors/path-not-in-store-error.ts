import { HydrantError } from './hydrant-error.ts';

/** A store path that should be in the local Nix store (e.g. an output to publish) is not valid there. */
export class PathNotInStoreError extends HydrantError {
  readonly code = 'PATH_NOT_IN_STORE';
  constructor(readonly paths: readonly string[]) {
    super(`not valid in the local Nix store: ${paths.slice(0, 5).join(', ')}${paths.length > 5 ? `, … (${paths.length} paths)` : ''}`);
  }
}
