import type { ParseArgsConfig } from 'node:util';

/*
 * What `hydrant` needs before it runs a command: the command's name, help and
 * options. This module and src/cli/commands.ts import no code of the commands
 * (each command's module is imported only when it runs), so `--help` or a
 * mistyped flag costs a Node start and little more.
 */

export type OptionSpec = NonNullable<ParseArgsConfig['options']>;

/** A command's parsed arguments (node:util parseArgs' result). */
export interface CommandArgs {
  values: Record<string, string | boolean | string[] | undefined>;
  positionals: string[];
}

/** A command's module (src/cli/commands/<name>.ts). `run` returns the process exit code. */
export interface CommandModule {
  run(args: CommandArgs): Promise<number>;
}

/** One `hydrant <name>` subcommand: its help and options, and how to import its code. */
export interface Command {
  name: string;
  summary: string;
  usage: string;
  /** Longer help: what it does and each option. */
  help: string;
  options: OptionSpec;
  /** Imports the command's module (a dynamic import: only the command that runs is loaded). */
  load(): Promise<CommandModule>;
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
