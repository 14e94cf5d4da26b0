import { HydrantError } from './hydrant-error.ts';

/** The runner refused a builder's credentials (token or client certificate) at join; retrying cannot help. */
export class BuilderUnauthenticatedError extends HydrantError {
  readonly code = 'BUILDER_UNAUTHENTICATED';
}
