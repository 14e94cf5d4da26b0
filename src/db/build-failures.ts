import type pg from 'pg';
import { chunks, CHUNK_SIZE } from './chunks.ts';
import type { StepOutput } from './step-rows.ts';
import { prepared, sql } from './sql.ts';
import { BuildStatus, buildStatusForFailedStep, dependentStatusForFailedStep } from './status.ts';

export interface FinishBuildsFailed {
  /** The build under which the failing step ran, or null when it never ran under one. */
  failedBuildId: number | null;
  failedStepDrvPath: string;
  /** The step's status: 1, 3 (retries exhausted), 6, 7, 8 (cached failure), 9, 10, 11 or 12. */
  stepStatus: number;
  /** Every build needing the step; `own` when the step is the build's own derivation. */
  builds: readonly { readonly id: number; readonly own: boolean }[];
  startTime: number | null;
  stopTime: number;
  errorMsg: string | null;
  machine: string;
  isCachedBuild: boolean;
  /** System and outputs of the failed step, for the propagated step rows. */
  system?: string | null;
  outputs?: readonly StepOutput[];
  /**
   * The build the propagated rows name in propagatedFrom, when not
   * failedBuildId: for a cached failure, the build whose step failed first.
   */
  propagatedFrom?: number | null;
  /** Builds per statement (tests use small values to exercise chunking). */
  chunkSize?: number;
}

/**
 * A step failed for good: every build needing it ends (if still unfinished),
 * the builds whose own derivation it is with the step's status mapped to a
 * build status (buildStatusForFailedStep), every other one with
 * dependentStatusForFailedStep. Each build ended here other than `failedBuildId` gets a BuildSteps
 * row for the failed derivation with the step's status and propagatedFrom =
 * failedBuildId (null when it never ran under a build); the failedBuildId's
 * own row is the caller's finishStep.
 *
 * Works in chunks of builds with array parameters: per chunk one statement
 * locks the rows in id order, one ends them and one adds the propagated step
 * rows, so 20,000 dependents take 60 statements and no IN/OR list. Hydra's
 * NrBuilds counter stays right without its trigger's quadratic cost on big
 * batches (park-finished-count.sql). Returns the ids this call ended,
 * ascending.
 */
export async function finishBuildsFailed(client: pg.ClientBase, a: FinishBuildsFailed): Promise<number[]> {
  const ownStatus = buildStatusForFailedStep(a.stepStatus);
  const dependentStatus = dependentStatusForFailedStep(a.stepStatus);
  const isCachedBuild = a.isCachedBuild || a.stepStatus === BuildStatus.CachedFailure ? 1 : 0;
  // A build's start time must be non-zero once it is finished (check constraint).
  const startTime = a.startTime || a.stopTime;
  const statusOf = new Map<number, number>();
  for (const b of a.builds) {
    if (b.own) statusOf.set(b.id, ownStatus);
    else if (!statusOf.has(b.id)) statusOf.set(b.id, dependentStatus);
  }
  // Ascending ids across all chunks: a global lock order.
  const ids = [...statusOf.keys()].sort((x, y) => x - y);
  const outputs = a.outputs ?? [];
  const ended: number[] = [];
  // See park-finished-count.sql: parked only once this call has ended a build,
  // so the NrBuilds row lock is already held (the trigger took it) and the
  // lock order stays Builds rows first, then NrBuilds, as for any finish.
  let parked = false;
  let endedWhileParked = 0;
  const batches = chunks(ids, a.chunkSize ?? CHUNK_SIZE);
  for (const [i, chunk] of batches.entries()) {
    if (!parked && i > 0 && ended.length > 0) {
      parked = (await client.query(sql('results/park-finished-count'))).rowCount === 1;
    }
    await client.query(prepared('results/lock-builds'), [chunk]);
    const { rows } = await client.query<{ id: number }>(prepared('results/finish-builds-failed'), [
      chunk,
      chunk.map((id) => statusOf.get(id)!),
      startTime,
      a.stopTime,
      isCachedBuild,
    ]);
    const endedHere = rows.map((r) => r.id).sort((x, y) => x - y);
    ended.push(...endedHere);
    if (parked) endedWhileParked += endedHere.length;
    const propagated = endedHere.filter((id) => id !== a.failedBuildId);
    if (propagated.length === 0) continue;
    await client.query(prepared('results/insert-propagated-steps'), [
      propagated,
      a.failedStepDrvPath,
      a.stepStatus,
      a.errorMsg,
      a.machine,
      a.system ?? null,
      a.propagatedFrom === undefined ? a.failedBuildId : a.propagatedFrom,
      outputs.map((o) => o.name),
      outputs.map((o) => o.path),
    ]);
  }
  if (parked) await client.query(prepared('results/restore-finished-count'), [endedWhileParked]);
  return ended;
}
