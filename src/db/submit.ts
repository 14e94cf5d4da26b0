import { createHash } from 'node:crypto';
import type pg from 'pg';
import type { EvaluatedJob } from '../eval/evaluate.ts';
import { JobsetNotFoundError } from '../errors/index.ts';
import { withTransaction } from './pool.ts';
import { prepared, sql } from './sql.ts';

export interface SubmitJob extends EvaluatedJob {
  outputs: readonly { name: string; path: string | null }[];
}

export interface SubmitResult {
  evalId: number;
  jobsetId: number;
  added: { job: string; id: number }[];
  existing: { job: string; id: number }[];
}

/**
 * Queues evaluated jobs the way Hydra's evaluator does, in one transaction:
 * Builds and BuildOutputs rows for new derivations, an evaluation with its
 * members, isCurrent moved to this evaluation, then NOTIFY builds_added.
 */
export async function submitJobs(
  pool: pg.Pool,
  a: { project: string; jobset: string; create: boolean; jobs: readonly SubmitJob[]; now: number; evalSeconds: number; source: string },
): Promise<SubmitResult> {
  return withTransaction(pool, async (c) => {
    let jobsetId = (await c.query<{ id: number }>(prepared('submit/find-jobset'), [a.project, a.jobset])).rows[0]?.id;
    if (jobsetId === undefined) {
      if (!a.create) throw new JobsetNotFoundError(`no jobset ${a.project}:${a.jobset} (pass --create to create it)`);
      await c.query(sql('submit/ensure-owner'));
      await c.query(prepared('submit/ensure-project'), [a.project]);
      await c.query(prepared('submit/create-jobset'), [a.project, a.jobset, a.source]);
      jobsetId = (await c.query<{ id: number }>(prepared('submit/find-jobset'), [a.project, a.jobset])).rows[0]!.id;
    }
    const found = await c.query<{ id: number; job: string; drvpath: string }>(prepared('submit/existing-builds'), [jobsetId, a.jobs.map((j) => j.drvPath)]);
    const known = new Map(found.rows.map((r) => [`${r.job}\0${r.drvpath}`, r.id]));
    const added: SubmitResult['added'] = [];
    const existing: SubmitResult['existing'] = [];
    for (const j of a.jobs) {
      const id = known.get(`${j.job}\0${j.drvPath}`);
      if (id !== undefined) {
        existing.push({ job: j.job, id });
        continue;
      }
      const { rows } = await c.query<{ id: number }>(prepared('submit/insert-build'), [
        a.now, jobsetId, j.job, j.nixName, j.description, j.drvPath, j.system, j.license, j.homepage, j.maintainers,
        j.maxSilent, j.timeout, j.isChannel ? 1 : 0, j.priority,
      ]);
      const buildId = rows[0]!.id;
      await c.query(prepared('submit/insert-build-outputs'), [buildId, j.outputs.map((o) => o.name), j.outputs.map((o) => o.path)]);
      added.push({ job: j.job, id: buildId });
    }
    const members = [...added.map((b) => [b.id, 1] as const), ...existing.map((b) => [b.id, 0] as const)];
    const hash = createHash('sha256').update(a.jobs.map((j) => `${j.job}=${j.drvPath}`).sort().join('\n')).digest('hex');
    const { rows } = await c.query<{ id: number }>(prepared('submit/insert-eval'), [jobsetId, a.now, a.evalSeconds, added.length > 0 ? 1 : 0, hash, members.length]);
    const evalId = rows[0]!.id;
    await c.query(prepared('submit/insert-eval-members'), [evalId, members.map((m) => m[0]), members.map((m) => m[1])]);
    await c.query(prepared('submit/mark-current'), [jobsetId, members.map((m) => m[0])]);
    if (added.length > 0) await c.query(sql('submit/notify-added'), [String(Math.min(...added.map((b) => b.id)))]);
    return { evalId, jobsetId, added, existing };
  });
}
