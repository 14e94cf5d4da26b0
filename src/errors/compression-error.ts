import { HydrantError } from './hydrant-error.ts';

/** Compressing or decompressing failed: unknown method or level, corrupt input, or the compressor tool failed. */
export class CompressionError extends HydrantError {
  readonly code = 'COMPRESSION_FAILED';
  constructor(
    readonly method: string,
    message: string,
    options?: { cause?: unknown },
  ) {
    super(`${method}: ${message}`, options);
  }
}
