import type pg from 'pg';
import { JobsetNotFoundError } from '../errors/index.ts';
import { JOB_DEFAULTS } from '../eval/job-defaults.ts';
import { withTransaction } from './pool.ts';
import { prepared, sql } from './sql.ts';

export interface QueueBuildRequest {
  jobsetId: number;
  job: string;
  drvPath: string;
  nixName: string;
  system: string;
  outputs: readonly { name: string; path: string | null }[];
  now: number;
}

/**
 * Queues one build of a jobset outside any evaluation (the runner's `PUT
 * /build`): a Builds row with Hydra's defaults for what an evaluation would
 * take from `meta`, its BuildOutputs, and NOTIFY builds_added. The jobset's
 * current evaluation is left as it is.
 */
export async function queueBuild(pool: pg.Pool, r: QueueBuildRequest): Promise<number> {
  return withTransaction(pool, async (c) => {
    const jobset = (await c.query(prepared('api/jobset-by-id'), [r.jobsetId])).rows[0];
    if (!jobset) throw new JobsetNotFoundError(`no jobset with id ${r.jobsetId}`);
    const { rows } = await c.query<{ id: number }>(prepared('submit/insert-build'), [
      r.now, r.jobsetId, r.job, r.nixName, null, r.drvPath, r.system, null, null, null, JOB_DEFAULTS.maxSilent, JOB_DEFAULTS.timeout, 0, JOB_DEFAULTS.priority,
    ]);
    const id = rows[0]!.id;
    await c.query(prepared('submit/insert-build-outputs'), [id, r.outputs.map((o) => o.name), r.outputs.map((o) => o.path)]);
    await c.query(sql('submit/notify-added'), [String(id)]);
    return id;
  });
}

