import pg from 'pg';
import { SearchTimeoutError } from '../errors/index.ts';
import type { Queryable } from './chunks.ts';
import { pageParams, type RecentBuildRow, type RecentBuildsFilter, recentBuildOf } from './build-history.ts';
import { sql } from './sql.ts';

/** How long one history search may run (Hydra's own web search allows 20 s). */
export const SEARCH_TIMEOUT_MS = 10_000;

/** One search kind set, the others null (src/status/build-search.ts says what each is). */
export interface BuildSearchTerms {
  readonly id: number | null;
  readonly path: string | null;
  readonly part: string | null;
  readonly text: string | null;
}

/**
 * Builds matching `terms` and the filter, newest first, one page. On a pool
 * the statement runs in a read-only transaction of its own, bounded by
 * `timeoutMs` (a SearchTimeoutError past it); a client is used as it is.
 */
export async function searchBuilds(
  db: Queryable,
  terms: BuildSearchTerms,
  f: RecentBuildsFilter,
  limit: number,
  offset: number,
  timeoutMs = SEARCH_TIMEOUT_MS,
): Promise<RecentBuildRow[]> {
  const params = [terms.id, terms.path, terms.part, terms.text, ...pageParams(f, limit, offset)];
  if (!(db instanceof pg.Pool)) return (await db.query(sql('history/search-builds'), params)).rows.map(recentBuildOf);
  const client = await db.connect();
  try {
    await client.query('begin read only');
    await client.query(sql('history/search-timeout'), [`${timeoutMs}ms`]);
    const { rows } = await client.query(sql('history/search-builds'), params);
    await client.query('commit');
    return rows.map(recentBuildOf);
  } catch (err) {
    await client.query('rollback').catch(() => {});
    if ((err as { code?: string }).code === '57014') {
      throw new SearchTimeoutError(`the search took over ${timeoutMs / 1000} s: narrow it (project, jobset, status), or search for a build id or a store path`, { cause: err });
    }
    throw err;
  } finally {
    client.release();
  }
}
