import type { Scheduler } from '../../actors/scheduler.ts';
import type { Queryable } from '../../db/chunks.ts';
import { readRecentBuilds, type RecentBuildsFilter } from '../../db/build-history.ts';
import { searchBuilds } from '../../db/build-search.ts';
import { BuildStatus } from '../../db/status.ts';
import { HttpError, SearchTimeoutError } from '../../errors/index.ts';
import { parseBuildSearch } from '../../status/build-search.ts';
import { pageOf } from '../../status/paging.ts';
import type { Router } from '../router.ts';

export interface HistoryContext {
  readonly db?: Queryable;
  /** null until the scheduler runs. */
  scheduler(): Scheduler | null;
  /** Searches (`q`) run at once, at most (default 2); one more is refused with a 503. */
  readonly maxSearches?: number;
}

const STATUS_CODES = new Map<string, number>(Object.entries(BuildStatus).map(([k, v]) => [k[0]!.toLowerCase() + k.slice(1), v]));

/** `status=`: queued, finished, failed (finished, not a success), a status name (`timedOut`) or code (`7`). */
function statusFilter(v: string | null): Pick<RecentBuildsFilter, 'finished' | 'buildStatus' | 'failedOnly'> {
  if (v === null || v === '' || v === 'any') return {};
  if (v === 'queued') return { finished: 0 };
  if (v === 'finished') return { finished: 1 };
  if (v === 'failed') return { failedOnly: true };
  const code = /^\d+$/.test(v) ? Number(v) : STATUS_CODES.get(v);
  if (code === undefined) throw new HttpError(400, `status must be queued, finished, failed, a status name (${[...STATUS_CODES.keys()].join(', ')}) or a code, not '${v}'`);
  return { buildStatus: code };
}

/**
 * `GET /status/history`: builds newest first, finished or not, from the
 * database (`?q=&project=&jobset=&job=&status=&offset=&limit=`; job matches
 * part of the name; `q` is what an operator types: a build id, a store path
 * or its hash part, part of project:jobset:job or of a machine's name,
 * src/status/build-search.ts). A build this runner has queued also carries its
 * top-level step's state from the runner's memory. `more` says whether a
 * next page exists (no count over a table of millions of builds).
 */
export function registerHistoryRoutes(router: Router, ctx: HistoryContext): void {
  // Each search holds one of the runner's database connections for up to its time bound:
  // a few at once, so searches never take the connections the scheduler writes results with.
  const maxSearches = ctx.maxSearches ?? 2;
  let searching = 0;
  router.get('/status/history', async (req) => {
    if (!ctx.db) throw new HttpError(404, 'this server reads no database');
    const q = req.url.searchParams;
    const { offset, limit } = pageOf(req.url, 50, 500);
    const text = (name: string): string | undefined => q.get(name) || undefined;
    const filter: RecentBuildsFilter = { project: text('project'), jobset: text('jobset'), job: text('job'), ...statusFilter(q.get('status')) };
    const search = parseBuildSearch(q.get('q') ?? '');
    let rows;
    if (search) {
      if (searching >= maxSearches) throw new HttpError(503, `${searching} searches are running: try again when they end`);
      searching++;
      try {
        rows = await searchBuilds(ctx.db, search, filter, limit + 1, offset);
      } catch (err) {
        // A search that matches little walks many builds: bounded, and the operator is told how to narrow it.
        if (err instanceof SearchTimeoutError) throw new HttpError(503, err.message, { cause: err });
        throw err;
      } finally {
        searching--;
      }
    } else {
      rows = await readRecentBuilds(ctx.db, filter, limit + 1, offset);
    }
    const more = rows.length > limit;
    if (more) rows.length = limit;
    const s = ctx.scheduler();
    const builds = rows.map((r) => {
      const queued = r.finished ? undefined : s?.graph.builds.get(r.id);
      return {
        ...r,
        // queued here: the top-level step's state in the runner (building, runnable, …); null when this runner has not loaded it.
        state: r.finished ? null : (queued?.toplevel?.state ?? null),
        link: `/status/build/${r.id}`,
      };
    });
    // `search`: how q was read (one of id, path, part, text), so a reader can say what was searched.
    return { builds, offset, limit, more, search };
  });
}
