import { loadRunnerConfig, redactUrl, type RunnerConfig } from '../config/runner-config.ts';
import type { Database } from '../db/connect.ts';
import { ConfigError, DatabaseUnavailableError } from '../errors/index.ts';

/* The database plumbing of the commands that use one (their DB_OPTIONS / NAMED_DB_OPTIONS, src/cli/command.ts). */

export function dbOverrides(values: Record<string, unknown>): Record<string, unknown> {
  return { dbUrl: values['db-url'], stateDir: values['state-dir'] };
}

/**
 * A command that writes to or reads a database the operator did not name
 * would use the embedded one in /var/lib/hydra/hydrant, which no runner
 * started with a config file uses: refused unless --embedded says so.
 */
function requireNamedDatabase(command: string, values: Record<string, unknown>, config: RunnerConfig): void {
  if (values.embedded === true && config.dbUrl) {
    const where = process.env.HYDRA_DATABASE_URL ? 'HYDRA_DATABASE_URL' : values['db-url'] !== undefined ? '--db-url' : `dbUrl in ${String(values.config)}`;
    throw new ConfigError(`hydrant ${command}: --embedded contradicts ${where}: drop one of them`);
  }
  if (config.dbUrl || values.config !== undefined || values['state-dir'] !== undefined || values.embedded === true) return;
  throw new ConfigError(
    `hydrant ${command}: no database named: pass --config with the runner's configuration file, --db-url URL (or HYDRA_DATABASE_URL), or --embedded for the embedded PostgreSQL in ${config.stateDir}`,
  );
}

/** The configuration of a command taking NAMED_DB_OPTIONS: refused if it names no database (requireNamedDatabase). */
export function namedDatabaseConfig(command: string, values: Record<string, unknown>): RunnerConfig {
  const config = loadRunnerConfig(values.config as string | undefined, dbOverrides(values));
  requireNamedDatabase(command, values, config);
  return config;
}

/** One line naming the database a command used (never its password). */
export function databaseLine(db: Database, config: RunnerConfig): string {
  return db.embedded ? `database: embedded PostgreSQL in ${config.stateDir}/postgres\n` : `database: ${redactUrl(db.url)}\n`;
}

/** Opens the configured database; a refused connection names the URL (no password) and where it was set. */
export async function openCommandDatabase(config: RunnerConfig): Promise<Database> {
  // Imported only here: serve uses this module before it loads any of pg (a configuration mistake is reported first).
  const { openDatabase } = await import('../db/connect.ts');
  try {
    return await openDatabase(config);
  } catch (err) {
    throw databaseError(err, config) ?? err;
  }
}

export function databaseError(err: unknown, config: RunnerConfig): DatabaseUnavailableError | null {
  if (!(err instanceof DatabaseUnavailableError) || !config.dbUrl) return null;
  const where = process.env.HYDRA_DATABASE_URL ? 'HYDRA_DATABASE_URL' : '--db-url or dbUrl';
  return new DatabaseUnavailableError(`${redactUrl(config.dbUrl)}: ${err.message} (set in ${where})`, { cause: err });
}
