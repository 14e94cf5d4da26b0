import { HydrantError } from './hydrant-error.ts';

/** `hydrant submit` named a project/jobset that does not exist (and --create was not given). */
export class JobsetNotFoundError extends HydrantError {
  readonly code = 'JOBSET_NOT_FOUND';
}
