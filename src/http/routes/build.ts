import { basename } from 'node:path';
import type pg from 'pg';
import type { SchedulerStore } from '../../actors/model.ts';
import { unixNow } from '../../actors/builder-port.ts';
import { queueBuild } from '../../db/queue-build.ts';
import { HttpError, HydrantError, JobsetNotFoundError } from '../../errors/index.ts';
import { isStorePath } from '../../nix/store-path.ts';
import { readJson, type Handler } from '../router.ts';

/**
 * `PUT /build {"jobsetId": n, "drv": "/nix/store/…drv", "job"?: name}`:
 * queues a build of a derivation the runner's store holds. The job name
 * defaults to the derivation's name.
 */
export function putBuild(pool: pg.Pool, store: SchedulerStore): Handler {
  return async (req) => {
    const body = (await readJson(req.raw)) as { jobsetId?: unknown; drv?: unknown; job?: unknown } | null;
    const jobsetId = body?.jobsetId;
    const drv = body?.drv;
    const job = body?.job;
    if (!Number.isSafeInteger(jobsetId) || (jobsetId as number) < 0) throw new HttpError(400, 'jobsetId must be a non-negative integer');
    if (typeof drv !== 'string' || !drv.endsWith('.drv') || !isStorePath(drv)) throw new HttpError(400, 'drv must be a .drv store path');
    if (job !== undefined && (typeof job !== 'string' || job === '' || job.length > 255)) throw new HttpError(400, 'job must be a non-empty string');
    let d;
    try {
      d = await store.readDerivation(drv);
    } catch (err) {
      if (err instanceof HydrantError) throw new HttpError(422, `cannot read ${drv}: ${err.message}`, { cause: err });
      throw err;
    }
    const nixName = basename(drv).slice(33, -'.drv'.length);
    try {
      const buildId = await queueBuild(pool, { jobsetId: jobsetId as number, job: (job as string | undefined) ?? nixName, drvPath: drv, nixName, system: d.system, outputs: d.outputs, now: unixNow() });
      return { buildId };
    } catch (err) {
      if (err instanceof JobsetNotFoundError) throw new HttpError(404, err.message, { cause: err });
      throw err;
    }
  };
}
