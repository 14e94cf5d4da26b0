import type pg from 'pg';
import type { CachedFailure, JobsetRow, QueuedBuildRow, SchedulerDb } from './scheduler-db-interface.ts';
import { findEarlierBuild, hasEarlierBuild } from './earlier-build.ts';
import { roundsColumns } from './rounds.ts';
import { finishBuildsFailed } from './build-failures.ts';
import { finishBuildCached, finishBuildSucceeded } from './build-results.ts';
import { addFailedPaths, isFailedPath } from './failed-paths.ts';
import { notifyBuildsFinished, notifyBuildStarted } from './notify.ts';
import { withStatementRetries, withTransaction } from './pool.ts';
import { prepared, sql } from './sql.ts';
import { queuedBuildIds, readBuildsByIds, readJobsetShares, streamQueuedBuilds } from './queue-reads.ts';
import { BuildStatus, StepBusy, StepType } from './status.ts';
import { abortUnloadableBuild } from './unloadable-builds.ts';
import { abortLeftoverSteps, finishStep, lockBuild, recordStep, setStepBusy, startStep, unbuiltStep } from './step-rows.ts';
import { buildSizes } from './output-sizes.ts';
import { readFailedBefore, readRealisedOutputs, recordResolvedStep } from './resolved-steps.ts';
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
    return startedInOneStatement(this.pool, starts);
  }

  async stepBusy(buildId: number, stepnr: number, busy: number): Promise<void> {
    await setStepBusy(this.pool, buildId, stepnr, busy);
  }

  async stepSucceeded(a: Parameters<SchedulerDb['stepSucceeded']>[0]): Promise<number[]> {
    return (await this.stepsSucceeded([a]))[0]!;
  }

  stepsSucceeded(list: readonly Parameters<SchedulerDb['stepSucceeded']>[0][]): Promise<number[][]> {
    // One result alone (what most are when builds finish one at a time): one statement, one round trip instead of five.
    if (list.length === 1 && fitsOneStatement(list[0]!)) {
      const a = list[0]!;
      return withStatementRetries(() => succeededAlone(this.pool, a)).then((ended) => [ended]);
    }
    // Rows are locked in build id order, as the start and failure paths do, so that concurrent transactions cannot deadlock.
    const order = list.map((_, i) => i).sort((x, y) => list[x]!.buildId - list[y]!.buildId);
    return withTransaction(this.pool, async (c) => {
      const out = new Array<number[]>(list.length);
      for (const i of order) out[i] = await succeededIn(c, list[i]!);
      await notifyBuildsFinished(c, out.flat());
      return out;
    });
  }

  stepFailed(a: Parameters<SchedulerDb['stepFailed']>[0]): Promise<number[]> {
    return withTransaction(this.pool, async (c) => {
      if (a.stepnr !== null) {
        await finishStep(c, { ...unbuiltStep(a, a.stepnr, 1, a.logFile), ...roundsColumns(a) });
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
      const ended = await failBuilds(c, a.buildId, a.startTime, a);
      if (a.cacheablePaths.length > 0) await addFailedPaths(c, a.cacheablePaths);
      await notifyBuildsFinished(c, ended);
      return ended;
    });
  }

  dependentsFailed(a: Parameters<SchedulerDb['dependentsFailed']>[0]): Promise<number[]> {
    return withTransaction(this.pool, async (c) => {
      const ended = await failBuilds(c, a.failedBuildId, a.stopTime, a);
      await notifyBuildsFinished(c, ended);
      return ended;
    });
  }

  async stepAborted(a: Parameters<SchedulerDb['stepAborted']>[0]): Promise<void> {
    await withTransaction(this.pool, (c) => finishStep(c, unbuiltStep(a, a.stepnr, null, null)));
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

  failedBefore(drvPath: string): Promise<{ build: number; status: number } | null> {
    return readFailedBefore(this.pool, drvPath);
  }

  async buildCached(a: Parameters<SchedulerDb['buildCached']>[0]): Promise<boolean> {
    const paths = a.outputs.flatMap((o) => (o.path === null ? [] : [o.path]));
    // No build made these outputs: as Hydra, what the outputs themselves say, written as a build of them
    // would (succeededIn). Read before the transaction, so that no connection waits on the store.
    const read = a.readOutputs && !(await hasEarlierBuild(this.pool, paths)) ? await a.readOutputs() : null;
    return withTransaction(this.pool, async (c) => {
      // As Hydra: products, metrics, sizes, release name and status of the build that made these outputs
      // (one that ended meanwhile too).
      const earlier = await findEarlierBuild(c, paths);
      const copied = earlier
        ? // A size the earlier build lacks is 0, as both Hydra runners write it (C++ getBuildOutputCached, Rust unwrap_or_default).
          { status: earlier.status, size: earlier.size ?? 0, closureSize: earlier.closureSize ?? 0, releaseName: earlier.releaseName, products: earlier.products, metrics: earlier.metrics }
        : read
          ? {
              status: read.nixSupport.failed ? BuildStatus.FailedWithOutput : BuildStatus.Success,
              ...buildSizes(read.outputs, read.closureSize),
              releaseName: read.nixSupport.releaseName,
              products: read.nixSupport.products,
              metrics: read.nixSupport.metrics,
            }
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

/** Ends `a.builds` over the failure of the step of `a.drvPath` (failed in build `failedBuildId`). */
function failBuilds(c: pg.ClientBase, failedBuildId: number, startTime: number, a: Omit<Parameters<SchedulerDb['dependentsFailed']>[0], 'failedBuildId'>): Promise<number[]> {
  return finishBuildsFailed(c, {
    failedBuildId,
    failedStepDrvPath: a.drvPath,
    stepStatus: a.status,
    builds: a.builds,
    startTime,
    stopTime: a.stopTime,
    errorMsg: a.errorMsg,
    machine: a.machine,
    isCachedBuild: false,
    system: a.system,
    outputs: a.outputs,
  });
}

type Starts = Parameters<SchedulerDb['stepsStarted']>[0];

/** Build id order (stable): rows are locked so, as the failure path does, so that concurrent transactions cannot deadlock. */
function startOrder(starts: Starts): number[] {
  return starts.map((_, i) => i).sort((x, y) => starts[x]!.buildId - starts[y]!.buildId);
}

/** Statements that lost the stepnr race (see steps-started.sql) before the transaction takes over. */
const START_STATEMENT_TRIES = 3;

/**
 * stepsStarted as one statement (steps-started.sql): one round trip
 * instead of 2 per start plus begin, NOTIFY and commit. Same rows and
 * NOTIFYs as startedInTransaction, which takes over when the statement
 * keeps losing the stepnr race.
 */
export async function startedInOneStatement(pool: pg.Pool, starts: Starts): Promise<number[]> {
  if (starts.length === 0) return [];
  const order = startOrder(starts);
  const sorted = order.map((i) => starts[i]!);
  const outStart: number[] = [];
  const outName: string[] = [];
  const outPath: (string | null)[] = [];
  sorted.forEach((a, k) => {
    for (const o of a.outputs) {
      outStart.push(k + 1);
      outName.push(o.name);
      outPath.push(o.path);
    }
  });
  const one = sorted.length === 1 ? sorted[0]! : null;
  // A start alone (most rounds): scalar parameters, a statement that keeps its generic plan (step-started.sql).
  const statement = prepared(one ? 'results/step-started' : 'results/steps-started');
  const params = one
    ? [one.buildId, one.drvPath, one.system, one.machine, one.startTime, one.firstStepOfBuild, StepBusy.Preparing, StepType.Build, outName, outPath]
    : [
        sorted.map((a) => a.buildId),
        sorted.map((a) => a.drvPath),
        sorted.map((a) => a.system),
        sorted.map((a) => a.machine),
        sorted.map((a) => a.startTime),
        sorted.map((a) => a.firstStepOfBuild),
        StepBusy.Preparing,
        StepType.Build,
        outStart,
        outName,
        outPath,
      ];
  for (let attempt = 1; attempt <= START_STATEMENT_TRIES; attempt++) {
    let row: { found: number[]; stepnrs: number[] };
    try {
      row = await withStatementRetries(async () => (await pool.query<{ found: number[]; stepnrs: number[] }>(statement, params)).rows[0]!);
    } catch (err) {
      if (isStepnrRace(err)) continue;
      throw err;
    }
    const found = new Set(row.found);
    const missing = sorted.find((a) => !found.has(a.buildId));
    // As lockBuild reports it; nothing was written.
    if (missing) throw new Error(`build ${missing.buildId} does not exist`);
    const stepnrs = new Array<number>(starts.length);
    order.forEach((i, k) => (stepnrs[i] = row.stepnrs[k]!));
    return stepnrs;
  }
  return startedInTransaction(pool, starts);
}

/** The statement's snapshot predates its wait for a build's lock, and max(stepnr) missed a step committed meanwhile. */
function isStepnrRace(err: unknown): boolean {
  const e = err as { code?: string; constraint?: string };
  return e.code === '23505' && e.constraint === 'buildsteps_pkey';
}

/** stepsStarted as a transaction: per start, lock its build, insert its row; the NOTIFYs go before the commit. */
export function startedInTransaction(pool: pg.Pool, starts: Starts): Promise<number[]> {
  const order = startOrder(starts);
  return withTransaction(pool, async (c) => {
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

/** One built step's rows inside a transaction (stepsSucceeded); returns the builds that ended. */
/** Builds one step may end with a single build_finished payload (ids of at most 10 digits and a tab each, under 8000 bytes). */
const ONE_STATEMENT_MAX_BUILDS = 600;

/** Whether step-succeeded.sql covers the result: a step row to finish, nothing to insert for the builds, one NOTIFY payload. */
function fitsOneStatement(a: Parameters<SchedulerDb['stepSucceeded']>[0]): boolean {
  return a.stepnr !== null && a.products.length === 0 && a.metrics.length === 0 && a.builds.length <= ONE_STATEMENT_MAX_BUILDS;
}

/** succeededIn and the NOTIFYs for one result, as one statement (its own transaction). */
async function succeededAlone(pool: pg.Pool, a: Parameters<SchedulerDb['stepSucceeded']>[0]): Promise<number[]> {
  const rounds = roundsColumns(a);
  const { size, closureSize } = buildSizes(a.outputs, a.closureSize);
  const res = await pool.query<{ ended: number[] }>(prepared('results/step-succeeded'), [
    a.buildId,
    a.stepnr,
    BuildStatus.Success,
    a.startTime,
    a.stopTime,
    a.machine,
    a.overheadMs,
    rounds.timesBuilt,
    rounds.isNonDeterministic,
    a.outputs.map((o) => o.name),
    a.outputs.map((o) => o.path),
    a.logFile,
    a.builds.map((b) => b.id),
    a.builds.map((b) => (b.isCachedBuild ? 1 : 0)),
    a.failedWithOutput ? BuildStatus.FailedWithOutput : BuildStatus.Success,
    size,
    closureSize,
    a.releaseName,
    a.outputs.map((o) => o.name),
    a.outputs.map((o) => o.path),
  ]);
  return res.rows[0]!.ended;
}

async function succeededIn(c: pg.PoolClient, a: Parameters<SchedulerDb['stepSucceeded']>[0]): Promise<number[]> {
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
  const { size, closureSize } = buildSizes(a.outputs, a.closureSize);
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
  return ended;
}
