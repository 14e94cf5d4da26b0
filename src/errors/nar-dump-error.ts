import { HydrantError } from './hydrant-error.ts';

/** A filesystem path could not be serialised to a NAR: unsupported file type, or it changed while being read. */
export class NarDumpError extends HydrantError {
  readonly code = 'NAR_DUMP';
  constructor(
    readonly path: string,
    readonly reason: string,
    options?: { cause?: unknown },
  ) {
    super(`cannot dump ${JSON.stringify(path)} to a NAR: ${reason}`, options);
  }
}
