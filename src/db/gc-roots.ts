import type { Pool } from './pool.ts';
import { sql } from './sql.ts';

/** A build whose paths hydra-update-gc-roots keeps (sql/gc-roots/kept-builds.sql). */
export interface KeptBuild {
  id: number;
  finished: boolean;
  buildStatus: number | null;
  drvPath: string;
  /** 0 unfinished, 1 marked keep, 2 of a kept evaluation or a job's newest success: the first that reached it. */
  stage: 0 | 1 | 2;
  outputs: string[];
}

/** The store paths Hydra's keepBuild roots for a build. */
export function rootsOfBuild(b: KeptBuild): string[] {
  const paths: string[] = [];
  if (b.finished && (b.buildStatus === 0 || b.buildStatus === 6)) paths.push(...b.outputs);
  // Derivations of failed builds stay so they can be restarted; a build first reached as `keep` is
  // kept with keepFailedDrvs off, as Hydra's first keepBuild call decides.
  if (!b.finished || (b.stage === 2 && b.buildStatus !== 0)) paths.push(b.drvPath);
  return paths;
}

export async function keptBuilds(pool: Pool, now: Date = new Date()): Promise<KeptBuild[]> {
  const r = await pool.query<{ id: number; finished: number; buildStatus: number | null; drvPath: string; stage: number; outputs: string[] }>(
    sql('gc-roots/kept-builds'),
    [Math.floor(now.getTime() / 1000)],
  );
  return r.rows.map((row) => ({ ...row, finished: row.finished === 1, stage: row.stage as 0 | 1 | 2 }));
}
