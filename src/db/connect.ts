import type pg from 'pg';
import type { RunnerConfig } from '../config/runner-config.ts';
import { DatabaseUnavailableError } from '../errors/index.ts';
import { startEmbeddedPostgres, type EmbeddedDatabase } from './embedded.ts';
import { createPool } from './pool.ts';

export interface Database {
  readonly url: string;
  readonly pool: pg.Pool;
  readonly embedded: boolean;
  close(): Promise<void>;
}

/**
 * Connects to the configured database, or starts the embedded PostgreSQL in
 * the state directory when none is configured.
 */
export async function openDatabase(config: Pick<RunnerConfig, 'dbUrl' | 'stateDir' | 'maxDbConnections'>): Promise<Database> {
  let embedded: EmbeddedDatabase | null = null;
  let url = config.dbUrl;
  if (!url) {
    embedded = await startEmbeddedPostgres({ stateDir: config.stateDir });
    url = embedded.url;
  }
  const pool = createPool(url, { max: config.maxDbConnections });
  try {
    await pool.query('select 1');
  } catch (err) {
    await pool.end().catch(() => {});
    if (embedded) await embedded.stop();
    throw new DatabaseUnavailableError(`cannot connect to the database: ${(err as Error).message}`, { cause: err });
  }
  return {
    url,
    pool,
    embedded: embedded !== null,
    async close() {
      await pool.end().catch(() => {});
      if (embedded) await embedded.stop();
    },
  };
}
