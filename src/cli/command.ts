import type { ParseArgsConfig } from 'node:util';
import { loadRunnerConfig, redactUrl, type RunnerConfig } from '../config/runner-config.ts';
import { openDatabase, type Database } from '../db/connect.ts';
import { ConfigError, DatabaseUnavailableError } from '../errors/index.ts';

export type OptionSpec = NonNullable<ParseArgsConfig['options']>;

/** One `hydrant <name>` subcommand. `run` returns the process exit code. */
export interface Command {
  name: string;
  summary: string;
  usage: string;
  /** Longer help: what it does and each option. */
  help: string;
  options: OptionSpec;
  run(args: { values: Record<string, string | boolean | string[] | undefined>; positionals: string[] }): Promise<number>;
}

/** Options every command takes (main.ts handles them before the command runs). */
export const LOG_OPTIONS: OptionSpec = {
  'log-format': { type: 'string' },
  'log-level': { type: 'string' },
};

export const LOG_OPTIONS_HELP = `
      --log-format F    json (default) or pretty (env HYDRANT_LOG_FORMAT)
      --log-level L     trace, debug, info (default), warn, error or fatal (env
                        HYDRANT_LOG_LEVEL); at debug, errors keep their stack`;

/** Options shared by commands that reach the database. */
export const DB_OPTIONS: OptionSpec = {
  config: { type: 'string', short: 'c' },
  'db-url': { type: 'string' },
  'state-dir': { type: 'string' },
};

export const DB_OPTIONS_HELP = `
  -c, --config FILE     runner configuration (TOML, Hydra queue runner keys)
      --db-url URL      PostgreSQL URL, postgres://USER[:PASSWORD]@HOST[:PORT]/DB
                        (HYDRA_DATABASE_URL wins; config key dbUrl); without
                        one, an embedded PostgreSQL in the state directory
      --state-dir DIR   Hydrant's state directory (default <hydraDataDir>/hydrant)`;

/** For the commands other than serve, which name their database or ask for the embedded one (see namedDatabaseConfig). */
export const NAMED_DB_OPTIONS: OptionSpec = { ...DB_OPTIONS, embedded: { type: 'boolean' } };

export const NAMED_DB_OPTIONS_HELP = `${DB_OPTIONS_HELP}
      --embedded        use the embedded PostgreSQL in the state directory; needed
                        when neither --config, --db-url, HYDRA_DATABASE_URL nor
                        --state-dir names a database`;

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
