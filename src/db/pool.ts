import pg from 'pg';
import { dropNotifications, flushNotifications, holdNotifications } from './notify.ts';

// Hydra stores Unix seconds in `integer` and sizes in `bigint`: return int8
// as a JS number (sizes stay far below 2^53) instead of a string.
pg.types.setTypeParser(pg.types.builtins.INT8, (v) => Number(v));

export type Pool = pg.Pool;
export type PoolClient = pg.PoolClient;

export interface PoolOptions {
  max?: number;
  applicationName?: string;
}

export function createPool(url: string, options: PoolOptions = {}): pg.Pool {
  const pool = new pg.Pool({
    connectionString: url,
    max: options.max ?? 16,
    application_name: options.applicationName ?? 'hydrant',
    idleTimeoutMillis: 30_000,
  });
  // An idle client losing its connection must not crash the process; the
  // next query reconnects.
  pool.on('error', () => {});
  // A checked-out client whose backend dies reports it through its query's
  // rejection; without a listener its 'error' event would crash the process.
  pool.on('connect', (client) => client.on('error', () => {}));
  return pool;
}

/** Runs `fn` in a transaction, retrying on serialization failures and deadlocks. */
export async function withTransaction<T>(
  pool: pg.Pool,
  fn: (client: pg.PoolClient) => Promise<T>,
  retries = 5,
): Promise<T> {
  for (let attempt = 0; ; attempt++) {
    const client = await pool.connect();
    try {
      await client.query('begin');
      // The transaction's NOTIFYs go in one statement before it commits.
      holdNotifications(client);
      const result = await fn(client);
      await flushNotifications(client);
      await client.query('commit');
      return result;
    } catch (err) {
      dropNotifications(client);
      await client.query('rollback').catch(() => {});
      const code = (err as { code?: string }).code;
      if ((code === '40001' || code === '40P01') && attempt < retries) continue;
      throw err;
    } finally {
      client.release();
    }
  }
}

/**
 * Runs one statement that is its own transaction (no begin/commit round
 * trips), retrying on serialization failures and deadlocks as withTransaction does.
 */
export async function withStatementRetries<T>(fn: () => Promise<T>, retries = 5): Promise<T> {
  for (let attempt = 0; ; attempt++) {
    try {
      return await fn();
    } catch (err) {
      const code = (err as { code?: string }).code;
      if ((code === '40001' || code === '40P01') && attempt < retries) continue;
      throw err;
    }
  }
}
