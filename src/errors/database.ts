/** Errors of the database: reaching it, its schema, the runner lock, the embedded server. */
import { errorKind } from './hydrant-error.ts';

/** The database's Hydra schema lacks tables or columns Hydrant needs. */
export class SchemaMismatchError extends errorKind('SCHEMA_MISMATCH') {
  constructor(readonly missing: readonly string[]) {
    super(`database schema is missing what Hydrant needs: ${missing.join(', ')}`);
  }
}

/** The database could not be reached or started. */
export class DatabaseUnavailableError extends errorKind('DB_UNAVAILABLE') {}

/** Another queue runner holds the database's runner lock. */
export class RunnerLockedError extends errorKind('RUNNER_LOCKED') {}

/** The runner lost its lock and another runner took it meanwhile: this one must stop. */
export class RunnerLockLostError extends errorKind('RUNNER_LOCK_LOST') {}

/** The database stayed unreachable for longer than dbGiveUpAfterInS: the runner stops. */
export class DatabaseGaveUpError extends errorKind('DB_GAVE_UP') {}

/** `hydrant submit` named a project/jobset that does not exist (and --create was not given). */
export class JobsetNotFoundError extends errorKind('JOBSET_NOT_FOUND') {}

/** The embedded database does not accept the state directory's credentials (or they are missing). */
export class EmbeddedCredentialsError extends errorKind('EMBEDDED_DB_CREDENTIALS') {}

/** A process Hydrant did not start holds the embedded database's data directory. */
export class EmbeddedConflictError extends errorKind('EMBEDDED_DB_CONFLICT') {}

/** The embedded database's binaries or data cannot be placed safely where the `postgres` user reaches them. */
export class EmbeddedPlacementError extends errorKind('EMBEDDED_DB_PLACEMENT') {}

/** Hydra's queue-runner lock file is held by another process: Hydra's own queue runner, or another Hydrant. */
export class QueueRunnerLockFileError extends errorKind('RUNNER_LOCK_FILE') {}

/** A history search ran past its time bound (statement_timeout): the operator narrows it. */
export class SearchTimeoutError extends errorKind('SEARCH_TIMEOUT') {}
