import { HydrantError } from './hydrant-error.ts';

/**
 * A builder job ended in a failure that is reported to the runner as a
 * result state (`resultState` is a `ResultState` value of the protocol).
 */
export class BuilderJobError extends HydrantError {
  readonly code = 'BUILDER_JOB';

  constructor(
    readonly resultState: number,
    message: string,
    options?: { cause?: unknown },
  ) {
    super(message, options);
  }
}
