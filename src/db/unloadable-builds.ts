import type pg from 'pg';
import { notifyBuildsFinished } from './notify.ts';
import { withTransaction } from './pool.ts';
import { prepared } from './sql.ts';
import { BuildStatus } from './status.ts';
import { recordStep } from './step-rows.ts';

export interface UnloadableBuild {
  buildId: number;
  /** As the Builds row has it (possibly not a store path at all). */
  drvPath: string;
  system: string;
  /** Names the cause; kept on the step row (Builds has no message column). */
  errorMsg: string;
  now: number;
}

/**
 * Ends a build whose derivation cannot be loaded, in one transaction: the
 * build aborted (3), a step row (status 3) carrying the cause, and NOTIFY
 * build_finished. False, writing nothing, when the build already ended.
 */
export function abortUnloadableBuild(pool: pg.Pool, b: UnloadableBuild): Promise<boolean> {
  return withTransaction(pool, async (c) => {
    const ended = await c.query(prepared('queue/abort-unloadable-build'), [b.buildId, b.now]);
    if (ended.rowCount !== 1) return false;
    await recordStep(c, {
      buildId: b.buildId,
      drvPath: b.drvPath,
      status: BuildStatus.Aborted,
      errorMsg: b.errorMsg,
      startTime: b.now,
      stopTime: b.now,
      machine: '',
      system: b.system,
    });
    await notifyBuildsFinished(c, [b.buildId]);
    return true;
  });
}
