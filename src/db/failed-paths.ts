import type pg from 'pg';
import { chunks, type Queryable } from './chunks.ts';
import { prepared } from './sql.ts';

/**
 * FailedPaths: output paths known to fail, so builds needing them fail at
 * once as cached failures instead of building again.
 */

const UNIQUE_VIOLATION = '23505';
const NO_ACTIVE_TRANSACTION = '25P01';

function codeOf(err: unknown): string | undefined {
  return (err as { code?: string }).code;
}

/**
 * Records failed paths; a path already there (or given twice) is a no-op.
 * Hydra's IdempotentInsert rule skips paths committed before the statement
 * began; a concurrent transaction inserting the same path can still collide
 * on the key, so each chunk runs under a savepoint and, after the other
 * transaction committed, is retried (the rule then sees its row). Outside a
 * transaction block the statement is simply retried.
 */
export async function addFailedPaths(client: pg.ClientBase, paths: readonly string[]): Promise<void> {
  const unique = [...new Set(paths)];
  for (const chunk of chunks(unique)) {
    await insertChunk(client, chunk);
  }
}

async function insertChunk(client: pg.ClientBase, chunk: string[]): Promise<void> {
  let inTransaction = true;
  try {
    await client.query('savepoint hydrant_failed_paths');
  } catch (err) {
    if (codeOf(err) !== NO_ACTIVE_TRANSACTION) throw err;
    inTransaction = false;
  }
  for (let attempt = 0; ; attempt++) {
    try {
      await client.query(prepared('results/insert-failed-paths'), [chunk]);
      if (inTransaction) await client.query('release savepoint hydrant_failed_paths');
      return;
    } catch (err) {
      if (codeOf(err) !== UNIQUE_VIOLATION || attempt >= 3) throw err;
      if (inTransaction) await client.query('rollback to savepoint hydrant_failed_paths');
    }
  }
}

/** Which of `paths` are known failed paths. */
export async function isFailedPath(db: Queryable, paths: readonly string[]): Promise<Set<string>> {
  const found = new Set<string>();
  for (const chunk of chunks([...new Set(paths)])) {
    const { rows } = await db.query<{ path: string }>(prepared('results/select-failed-paths'), [chunk]);
    for (const r of rows) found.add(r.path);
  }
  return found;
}
