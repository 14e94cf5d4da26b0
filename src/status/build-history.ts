import type { Queryable } from '../db/chunks.ts';
import { readBuild, readBuildSteps } from '../db/build-history.ts';
import { BuildStatus } from '../db/status.ts';
import { busyName } from './views.ts';

/** A row's status as the step graph's final state (the visualizer's colours): the status name keeps the detail. */
function stateOfStatus(status: number | null): string {
  switch (status) {
    case null:
      return 'queued';
    case BuildStatus.Success:
      return 'succeeded';
    case BuildStatus.FailedWithOutput:
      return 'failedWithOutput';
    case BuildStatus.Resolved:
      return 'resolved';
    case BuildStatus.Cancelled:
    case BuildStatus.Obsolete:
      return 'cancelled';
    default:
      return 'failed';
  }
}

/**
 * A build that is not queued in this runner (finished, or not yet loaded),
 * from its database rows: the build's status and outputs, and its step
 * rows (every attempt, `id` = stepnr) with their final state, error
 * message, machine, times, outputs, the build a failure was propagated
 * from, and for a resolved step (status 13) the step it was resolved to.
 * The shape of a queued build's tree (`build`, `steps`, `stepCount`), so
 * the visualizer draws both; `source: 'database'` tells them apart.
 */
export async function buildHistory(db: Queryable, id: number, limit: number, storeDir: string) {
  const build = await readBuild(db, id);
  if (!build) return null;
  const rows = await readBuildSteps(db, id, limit + 1, storeDir);
  const truncated = rows.length > limit;
  if (truncated) rows.length = limit;
  // The latest attempt of each derivation: where a resolved step's link points.
  const latest = new Map<string, number>();
  for (const r of rows) latest.set(r.drvPath, r.stepnr);
  const steps = rows.map((r) => ({
    id: r.stepnr,
    stepnr: r.stepnr,
    drvPath: r.drvPath,
    // A row still busy is a running attempt; otherwise its final status.
    state: r.busy !== 0 ? 'building' : stateOfStatus(r.status),
    status: r.status,
    statusName: r.busy !== 0 ? busyName(r.busy) : r.statusName,
    type: r.type === 1 ? 'substitution' : 'build',
    system: r.system,
    machine: r.machine === '' ? null : r.machine,
    startTime: r.startTime,
    stopTime: r.stopTime,
    errorMsg: r.errorMsg,
    propagatedFrom: r.propagatedFrom,
    timesBuilt: r.timesBuilt,
    overhead: r.overhead,
    resolvedDrvPath: r.resolvedDrvPath,
    resolvedTo: r.resolvedDrvPath === null ? null : (latest.get(r.resolvedDrvPath) ?? null),
    outputs: r.outputs,
    // The database keeps no edges between steps: the rows are drawn as a list.
    deps: [] as number[],
    log: `/status/build/${id}/step/${r.stepnr}/log`,
  }));
  const failed = rows.filter((r) => r.busy === 0 && r.status !== null && r.status !== 0 && r.status !== 13);
  return {
    at: Date.now(),
    source: 'database' as const,
    build: {
      id: build.id,
      project: build.project,
      jobset: build.jobset,
      job: build.job,
      drvPath: build.drvPath,
      system: build.system,
      nixName: build.nixName,
      finished: build.finished,
      buildStatus: build.buildStatus,
      status: build.buildStatusName,
      isCachedBuild: build.isCachedBuild,
      timestamp: build.timestamp,
      startTime: build.startTime,
      stopTime: build.stopTime,
      size: build.size,
      closureSize: build.closureSize,
      outputs: build.outputs,
      toplevel: null,
      // The step whose failure decided the build (its last failed row), if any.
      failedStep: failed.at(-1)?.stepnr ?? null,
    },
    steps,
    stepCount: steps.length,
    truncated,
  };
}
