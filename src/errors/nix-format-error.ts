import { HydrantError } from './hydrant-error.ts';

/** Malformed Nix data: a store path, hash, .drv, NAR, narinfo, key or nix-support file. */
export class NixFormatError extends HydrantError {
  readonly code = 'NIX_FORMAT';
  constructor(
    readonly format: string,
    message: string,
    options?: { cause?: unknown },
  ) {
    super(`${format}: ${message}`, options);
  }
}
