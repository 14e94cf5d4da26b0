import type { ParseArgsConfig } from 'node:util';

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

/** Options shared by commands that reach the database. */
export const DB_OPTIONS: OptionSpec = {
  config: { type: 'string', short: 'c' },
  'db-url': { type: 'string' },
  'state-dir': { type: 'string' },
};

export const DB_OPTIONS_HELP = `
  -c, --config FILE     runner configuration (TOML, Hydra queue runner keys)
      --db-url URL      PostgreSQL URL (HYDRA_DATABASE_URL wins); without one, an
                        embedded PostgreSQL is started in the state directory
      --state-dir DIR   Hydrant's state directory (default <hydraDataDir>/hydrant)`;

export function dbOverrides(values: Record<string, unknown>): Record<string, unknown> {
  return { dbUrl: values['db-url'], stateDir: values['state-dir'] };
}
