import { HydrantError } from './hydrant-error.ts';

/** The embedded database's binaries or data cannot be placed safely where the `postgres` user reaches them. */
export class EmbeddedPlacementError extends HydrantError {
  readonly code = 'EMBEDDED_DB_PLACEMENT';
}
