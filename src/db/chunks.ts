import type pg from 'pg';

/** Anything that runs a query: a pool, a pooled client or a plain client. */
export type Queryable = Pick<pg.ClientBase, 'query'>;

/**
 * Ids or paths per statement for bulk writes and reads. Lists go to
 * PostgreSQL as one array parameter (`= any($1::int[])`, `unnest`), never as
 * an IN/OR list, and in chunks of this size so one statement's work, locks
 * and WAL stay bounded however many builds a failure reaches.
 */
export const CHUNK_SIZE = 1000;

/** Splits a list into consecutive slices of at most `size` items. */
export function chunks<T>(items: readonly T[], size = CHUNK_SIZE): T[][] {
  if (!Number.isInteger(size) || size < 1) throw new RangeError(`chunk size must be a positive integer, got ${size}`);
  const out: T[][] = [];
  for (let i = 0; i < items.length; i += size) out.push(items.slice(i, i + size));
  return out;
}
