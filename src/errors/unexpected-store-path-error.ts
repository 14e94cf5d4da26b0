import { HydrantError } from './hydrant-error.ts';

/**
 * A transfer of store paths did not carry exactly the paths that were asked
 * for: a path nobody expected, the same path twice, or an expected path that
 * never came. Nothing from the transfer is imported.
 */
export class UnexpectedStorePathError extends HydrantError {
  readonly code = 'UNEXPECTED_STORE_PATH';
  constructor(
    readonly storePath: string,
    readonly reason: 'unexpected' | 'duplicate' | 'missing',
  ) {
    const what = { unexpected: 'was not expected', duplicate: 'was sent twice', missing: 'was expected but not sent' }[reason];
    super(`refusing transfer: store path ${storePath} ${what}`);
  }
}
