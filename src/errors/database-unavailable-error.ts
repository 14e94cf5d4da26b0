import { HydrantError } from './hydrant-error.ts';

/** The database could not be reached or started. */
export class DatabaseUnavailableError extends HydrantError {
  readonly code = 'DB_UNAVAILABLE';
}
