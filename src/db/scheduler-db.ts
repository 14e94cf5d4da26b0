import type pg from 'pg';
import type { CachedFailure, JobsetRow, QueuedBuildRow, SchedulerDb } from './scheduler-db-interface.ts';
import { findEarlierBuild } from './earlier-build.ts';
import { roundsColumns } from './rounds.ts';
import { finishBuildsFailed } from './build-failures.ts';
import { finishBuildCached, finishBuildSucceeded } from './build-results.ts';
import { addFailedPaths, isFailedPath } from './failed-paths.ts';
import { notifyBuildsFinished, notifyBuildStarted } from './notify.ts';
import { withTransaction } from './pool.ts';
import { sql } from './sql.ts';
import { queuedBuildIds, readBuildsByIds, readJobsetShares, streamQueuedBuilds } from './queue-reads.ts';
import { BuildStatus, StepBusy, StepType } from './status.ts';
import { abortUnloadableBuild } from './unloadable-builds.ts';
import { abortLeftoverSteps, finishStep, lockBuild, recordStep, setStepBusy, startStep } from './step-rows.ts';
import { buildSizes } from './output-sizes.ts';
import { readRealisedOutputs, recordResolvedStep } from './resolved-steps.ts';
import { STORE_DIR } from '../nix/store-path.ts';

/**
 * The scheduler's database operations over PostgreSQL: each write is one
 * transaction (retried on serialization failures and deadlocks), composed
 * from the statement modules in src/db.
 */
export class PgSchedulerDb implements SchedulerDb {
  constructor(private readonly pool: pg.Pool) {}

  abortLeftovers(now: number): Promise<number> {
    return abortLeftoverSteps(this.pool, now);
  }

  async abortOrphans(now: number, live: readonly { buildId: number; stepnr: number }[]): Promise<number> {
    const r = await this.pool.query(sql('results/abort-orphan-steps'), [now, live.map((l) => l.buildId), live.map((l) => l.stepnr)]);
    return r.rowCount ?? 0;
  }

  stepsStarted(starts: Parameters<SchedulerDb['stepsStarted']>[0]): Promise<number[]> {
    // Rows are locked in build id order, as the failure path does, so that
    // concurrent transactions cannot deadlock.
    const order = starts.map((_, i) => i).sort((x, y) => starts[x]!.buildId - starts[y]!.buildId);
    return withTransaction(this.pool, async (c) => {
      const stepnrs = new Array<number>(starts.length);
      for (const i of order) {
        const a = starts[i]!;
        stepnrs[i] = await startStep(c, {
          buildId: a.buildId,
          drvPath: a.drvPath,
          system: a.system,
          machine: a.machine,
          startTime: a.startTime,
          busy: StepBusy.Preparing,
          type: StepType.Build,
          outputs: a.outputs,
        });
        if (a.firstStepOfBuild) await notifyBuildStarted(c, a.buildId);
      }
      return stepnrs;
    });
  }

  async stepBusy(buildId: number, stepnr: number, busy: number): Promise<void> {
    await setStepBusy(this.pool, buildId, stepnr, busy);
  }

  stepSucceeded(a: Parameters<SchedulerDb['stepSucceeded']>[0]): Promise<number[]> {
    return withTransaction(this.pool, async (c) => {
      const row = {
        buildId: a.buildId,
        status: BuildStatus.Success,
        errorMsg: null,
        startTime: a.startTime,
        stopTime: a.stopTime,
        machine: a.machine,
        overhead: a.overheadMs,
        ...roundsColumns(a),
        outputs: a.outputs.map((o) => ({ name: o.name, path: o.path })),
      };
      if (a.stepnr !== null) await finishStep(c, { ...row, stepnr: a.stepnr, logFile: a.logFile });
      else await recordStep(c, { ...row, drvPath: a.drvPath, system: a.system });
      const { size, closureSize } = buildSizes(a.outputs);
      const ended: number[] = [];
      for (const b of a.builds) {
        const done = await finishBuildSucceeded(c, {
          buildId: b.id,
          status: a.failedWithOutput ? BuildStatus.FailedWithOutput : BuildStatus.Success,
          startTime: a.startTime,
          stopTime: a.stopTime,
          size,
          closureSize,
          releaseName: a.releaseName,
          isCachedBuild: b.isCachedBuild,
          outputs: a.outputs.map((o) => ({ name: o.name, path: o.path })),
          products: a.products,
          metrics: a.metrics,
        });
        if (done) ended.push(b.id);
      }
      await notifyBuildsFinished(c, ended);
      return ended;
    });
  }

  stepFailed(a: Parameters<SchedulerDb['stepFailed']>[0]): Promise<number[]> {
    return withTransaction(this.pool, async (c) => {
      if (a.stepnr !== null) {
        await finishStep(c, {
          buildId: a.buildId,
          stepnr: a.stepnr,
          status: a.status,
          errorMsg: a.errorMsg,
          startTime: a.startTime,
          stopTime: a.stopTime,
          machine: a.machine,
          overhead: null,
          ...roundsColumns(a),
          logFile: a.logFile,
        });
      } else {
        await recordStep(c, {
          buildId: a.buildId,
          drvPath: a.drvPath,
          status: a.status,
          errorMsg: a.errorMsg,
          startTime: a.startTime,
          stopTime: a.stopTime,
          machine: a.machine,
          system: a.system,
        });
      }
      const ended = await finishBuildsFailed(c, {
        failedBuildId: a.buildId,
        failedStepDrvPath: a.drvPath,
        stepStatus: a.status,
        builds: a.builds,
        startTime: a.startTime,
        stopTime: a.stopTime,
        errorMsg: a.errorMsg,
        machine: a.machine,
        isCachedBuild: false,
        system: a.system,
        outputs: a.outputs,
      });
      if (a.cacheablePaths.length > 0) await addFailedPaths(c, a.cacheablePaths);
      await notifyBuildsFinished(c, ended);
      return ended;
    });
  }

  dependentsFailed(a: Parameters<SchedulerDb['dependentsFailed']>[0]): Promise<number[]> {
    return withTransaction(this.pool, async (c) => {
      const ended = await finishBuildsFailed(c, {
        failedBuildId: a.failedBuildId,
        failedStepDrvPath: a.drvPath,
        stepStatus: a.status,
        builds: a.builds,
        startTime: a.stopTime,
        stopTime: a.stopTime,
        errorMsg: a.errorMsg,
        machine: a.machine,
        isCachedBuild: false,
        system: a.system,
        outputs: a.outputs,
      });
      await notifyBuildsFinished(c, ended);
      return ended;
    });
  }

  async stepAborted(a: Parameters<SchedulerDb['stepAborted']>[0]): Promise<void> {
    await withTransaction(this.pool, (c) =>
      finishStep(c, {
        buildId: a.buildId,
        stepnr: a.stepnr,
        status: a.status,
        errorMsg: a.errorMsg,
        startTime: a.startTime,
        stopTime: a.stopTime,
        machine: a.machine,
        overhead: null,
        timesBuilt: null,
        isNonDeterministic: null,
        logFile: null,
      }),
    );
  }

  stepResolved(a: Parameters<SchedulerDb['stepResolved']>[0]): Promise<{ stepnr: number; inserted: boolean }> {
    return withTransaction(this.pool, (c) => recordResolvedStep(c, a));
  }

  stepSubstituted(a: Parameters<SchedulerDb['stepSubstituted']>[0]): Promise<void> {
    return withTransaction(this.pool, async (c) => {
      await lockBuild(c, a.buildId);
      for (const o of a.outputs) {
        await recordStep(c, { buildId: a.buildId, type: StepType.Substitution, drvPath: a.drvPath, status: BuildStatus.Success, startTime: a.startTime, stopTime: a.stopTime, outputs: [o] });
      }
    });
  }

  realisedOutputs(drvPaths: readonly string[]): Promise<{ drvPath: string; name: string; path: string }[]> {
    return readRealisedOutputs(this.pool, drvPaths, STORE_DIR);
  }

  buildCached(a: Parameters<SchedulerDb['buildCached']>[0]): Promise<boolean> {
    return withTransaction(this.pool, async (c) => {
      // As Hydra: products, metrics, sizes, release name and status of the build that made these outputs.
      const earlier = await findEarlierBuild(c, a.outputs.flatMap((o) => (o.path === null ? [] : [o.path])));
      const copied = earlier
        ? { status: earlier.status, size: earlier.size, closureSize: earlier.closureSize, releaseName: earlier.releaseName, products: earlier.products, metrics: earlier.metrics }
        : {};
      const done = await finishBuildCached(c, { ...a, ...copied });
      if (done) await notifyBuildsFinished(c, [a.buildId]);
      return done;
    });
  }

  buildCachedFailure(a: Parameters<SchedulerDb['buildCachedFailure']>[0]): Promise<boolean> {
    return withTransaction(this.pool, async (c) => {
      const ended = await finishCachedFailures(c, [a]);
      await notifyBuildsFinished(c, ended);
      return ended.length > 0;
    });
  }

  buildUnloadable(a: Parameters<SchedulerDb['buildUnloadable']>[0]): Promise<boolean> {
    return abortUnloadableBuild(this.pool, a);
  }

  buildsCachedFailure(list: Parameters<SchedulerDb['buildsCachedFailure']>[0]): Promise<number[]> {
    return withTransaction(this.pool, async (c) => {
      const ended = await finishCachedFailures(c, list);
      // One notification per build, as one at a time would send (they are unrelated builds).
      for (const id of ended) await notifyBuildsFinished(c, [id]);
      return ended;
    });
  }

  jobsets(windowSeconds: number): Promise<JobsetRow[]> {
    return readJobsetShares(this.pool, windowSeconds);
  }

  queuedBuilds(afterId: number): AsyncIterable<QueuedBuildRow[]> {
    return streamQueuedBuilds(this.pool, { afterId, batchSize: 1000 });
  }

  queuedIds(): Promise<Map<number, number>> {
    return queuedBuildIds(this.pool);
  }

  async buildsByIds(ids: readonly number[]): Promise<QueuedBuildRow[]> {
    return (await readBuildsByIds(this.pool, ids)).filter((b) => !b.finished);
  }

  failedPaths(paths: readonly string[]): Promise<Set<string>> {
    return isFailedPath(this.pool, paths);
  }
}

/**
 * Ends builds that need a derivation in FailedPaths, one finishBuildsFailed
 * per failed derivation (array statements per chunk of builds): each build
 * gets a cached-failure step row (8, without times: no time was spent) with
 * the derivation's outputs, naming in propagatedFrom the build under which
 * it last failed (original-failed-build.sql; Hydra's Rust runner
 * state/mod.rs handle_previous_failure, C++ queue-monitor.cc:187-207).
 */
async function finishCachedFailures(c: pg.ClientBase, list: readonly CachedFailure[]): Promise<number[]> {
  const groups = new Map<string, CachedFailure[]>();
  for (const a of list) {
    const key = `${a.failedDrvPath}\0${a.system}`;
    const g = groups.get(key);
    if (g) g.push(a);
    else groups.set(key, [a]);
  }
  const ended: number[] = [];
  for (const g of groups.values()) {
    const { failedDrvPath, system, now, outputs } = g[0]!;
    const { rows } = await c.query<{ build: number | null }>(sql('results/original-failed-build'), [
      failedDrvPath,
      outputs.flatMap((o) => (o.path ? [o.path] : [])),
      outputs.filter((o) => !o.path).map((o) => o.name),
    ]);
    ended.push(
      ...(await finishBuildsFailed(c, {
        failedBuildId: null,
        propagatedFrom: rows[0]?.build ?? null,
        failedStepDrvPath: failedDrvPath,
        stepStatus: BuildStatus.CachedFailure,
        builds: g.map((a) => ({ id: a.buildId, own: a.own })),
        startTime: now,
        stopTime: now,
        errorMsg: null,
        machine: '',
        isCachedBuild: true,
        system,
        outputs,
      })),
    );
  }
  return ended;
}
