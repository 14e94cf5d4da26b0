import { HydrantError } from './hydrant-error.ts';

/** The embedded database does not accept the state directory's credentials (or they are missing). */
export class EmbeddedCredentialsError extends HydrantError {
  readonly code = 'EMBEDDED_DB_CREDENTIALS';
}
