/** Errors of `hydrant provision`: a backend that failed to create, start, stop, destroy or list machines. */
import { errorKind } from './hydrant-error.ts';

/** A backend operation failed (its command exited non-zero, answered something unusable, or a process could not start). */
export class ProvisionBackendError extends errorKind('PROVISION_BACKEND') {
  constructor(
    readonly operation: string,
    readonly machine: string | null,
    readonly reason: string,
    options?: { cause?: unknown },
  ) {
    super(`${operation}${machine ? ` ${machine}` : ''}: ${reason}`, options);
  }
}
