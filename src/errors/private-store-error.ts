import { HydrantError } from './hydrant-error.ts';

/** A builder's private Nix store could not be set up or entered (unshare/mount failed, Nix lives under /nix, ...). */
export class PrivateStoreError extends HydrantError {
  readonly code = 'PRIVATE_STORE';
  constructor(
    readonly dir: string,
    message: string,
    options?: { cause?: unknown },
  ) {
    super(`private store ${dir}: ${message}`, options);
  }
}
