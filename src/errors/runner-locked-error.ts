import { HydrantError } from './hydrant-error.ts';

/** Another queue runner holds the database's runner lock. */
export class RunnerLockedError extends HydrantError {
  readonly code = 'RUNNER_LOCKED';
}
