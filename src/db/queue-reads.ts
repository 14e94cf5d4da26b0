import type pg from 'pg';
import type { JobsetRow, QueuedBuildRow } from './scheduler-db-interface.ts';
import { chunks, type Queryable } from './chunks.ts';
import { streamRows } from './cursor.ts';
import { sql } from './sql.ts';

/** Reads the scheduler makes at startup and on each pass over the queue. */

/** A jobset with its share and recent build seconds (the scheduler's JobsetRow). */
export type JobsetShare = JobsetRow;

/** A build row as the scheduler reads it, plus whether it has finished since. */
export interface QueuedBuild extends QueuedBuildRow {
  finished: boolean;
}

interface BuildDbRow extends Record<string, unknown> {
  id: number;
  jobset_id: number;
  project: string;
  jobset: string;
  job: string;
  drvpath: string;
  system: string;
  maxsilent: number | null;
  timeout: number | null;
  timestamp: number;
  priority: number;
  globalpriority: number;
  finished: number;
}

// Hydra's column defaults, for rows that have them null.
const DEFAULT_MAX_SILENT = 3600;
const DEFAULT_TIMEOUT = 36000;

function toBuild(r: BuildDbRow): QueuedBuild {
  return {
    id: r.id,
    jobsetId: r.jobset_id,
    project: r.project,
    jobset: r.jobset,
    job: r.job,
    drvPath: r.drvpath,
    system: r.system,
    maxSilent: r.maxsilent ?? DEFAULT_MAX_SILENT,
    timeout: r.timeout ?? DEFAULT_TIMEOUT,
    timestamp: r.timestamp,
    priority: r.priority,
    globalPriority: r.globalpriority,
    finished: r.finished !== 0,
  };
}

export const DAY_SECONDS = 24 * 60 * 60;

/**
 * Every jobset with its scheduling shares and the build seconds its steps
 * used in the last `windowSeconds` (24 h) before `now` (Unix seconds).
 */
export async function readJobsetShares(
  db: Queryable,
  now = Math.floor(Date.now() / 1000),
  windowSeconds = DAY_SECONDS,
): Promise<JobsetShare[]> {
  const { rows } = await db.query<{ id: number; project: string; name: string; schedulingshares: number; seconds: number }>(
    sql('results/jobset-shares'),
    [now - windowSeconds],
  );
  return rows.map((r) => ({
    id: r.id,
    project: r.project,
    name: r.name,
    schedulingShares: r.schedulingshares,
    recentSeconds: Number(r.seconds),
  }));
}

/**
 * Unfinished builds with id > afterId, by id, in batches of `batchSize`
 * through a server-side cursor (the connection is held until the iteration
 * ends or is abandoned).
 */
export async function* streamQueuedBuilds(
  pool: pg.Pool,
  opts: { afterId?: number; batchSize?: number } = {},
): AsyncGenerator<QueuedBuild[], void, undefined> {
  for await (const batch of streamRows<BuildDbRow>(pool, sql('results/queued-builds'), [opts.afterId ?? 0], opts.batchSize ?? 1000)) {
    yield batch.map(toBuild);
  }
}

/** id → globalPriority of every unfinished build. */
export async function queuedBuildIds(db: Queryable): Promise<Map<number, number>> {
  // Array rows: 100k+ of them, no per-row objects with named keys needed.
  const { rows } = await db.query<[number, number]>({ text: sql('results/queued-build-ids'), rowMode: 'array' });
  const out = new Map<number, number>();
  for (const [id, globalPriority] of rows) out.set(id, globalPriority);
  return out;
}

/** The builds with these ids that exist (finished or not), ascending, read in chunks. */
export async function readBuildsByIds(db: Queryable, ids: readonly number[]): Promise<QueuedBuild[]> {
  const sorted = [...new Set(ids)].sort((x, y) => x - y);
  const out: QueuedBuild[] = [];
  for (const chunk of chunks(sorted)) {
    const { rows } = await db.query<BuildDbRow>(sql('results/builds-by-ids'), [chunk]);
    for (const r of rows) out.push(toBuild(r));
  }
  return out;
}
