import { HydrantError } from './hydrant-error.ts';

/** The runner lost its lock and another runner took it meanwhile: this one must stop. */
export class RunnerLockLostError extends HydrantError {
  readonly code = 'RUNNER_LOCK_LOST';
}
