import { HydrantError } from './hydrant-error.ts';

/** A process Hydrant did not start holds the embedded database's data directory. */
export class EmbeddedConflictError extends HydrantError {
  readonly code = 'EMBEDDED_DB_CONFLICT';
}
