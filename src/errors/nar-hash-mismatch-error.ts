import { HydrantError } from './hydrant-error.ts';

/**
 * The NAR serialised from a store path does not match the hash or size the
 * store recorded for it (the path was modified, or the store's metadata is
 * wrong). Publishing it would hand out a path Nix rejects, so nothing is published.
 */
export class NarHashMismatchError extends HydrantError {
  readonly code = 'NAR_HASH_MISMATCH';
  constructor(
    readonly storePath: string,
    readonly expected: { narHash: string; narSize: number },
    readonly actual: { narHash: string; narSize: number },
  ) {
    super(
      `refusing to publish ${storePath}: its NAR hashes to ${actual.narHash} (${actual.narSize} bytes) ` +
        `but the store recorded ${expected.narHash} (${expected.narSize} bytes)`,
    );
  }
}
