import { HydrantError } from './hydrant-error.ts';

/** The database stayed unreachable for longer than dbGiveUpAfterInS: the runner stops. */
export class DatabaseGaveUpError extends HydrantError {
  readonly code = 'DB_GAVE_UP';
}
