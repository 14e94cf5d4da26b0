import { HydrantError } from './hydrant-error.ts';

/** The database's Hydra schema lacks tables or columns Hydrant needs. */
export class SchemaMismatchError extends HydrantError {
  readonly code = 'SCHEMA_MISMATCH';
  constructor(readonly missing: readonly string[]) {
    super(`database schema is missing what Hydrant needs: ${missing.join(', ')}`);
  }
}
