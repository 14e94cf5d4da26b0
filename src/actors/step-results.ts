import type { Logger } from '../util/logger.ts';
import { BuildStatus } from '../db/status.ts';
import type { SchedulerDb } from '../db/scheduler-db-interface.ts';
import { outputsReader, unixNow, type BuildRounds, type StepFinisher, type StepOutcome } from './builder-port.ts';
import { Coalescer } from './coalescer.ts';
import type { ActiveJob } from './active-jobs.ts';
import type { BuildRecord, Clock, FailureCache, StepRecord } from './model.ts';
import type { ResultWriter } from './result-writer.ts';
import type { SchedulerStats } from './scheduler-stats.ts';
import type { AddBuildResult, QueuedBuild, StepGraph } from './step-graph.ts';
import { rowBuild } from './row-build.ts';

export interface StepResultsOptions {
  db: SchedulerDb;
  graph: StepGraph;
  writer: ResultWriter<ActiveJob>;
  stats: SchedulerStats;
  log: Logger;
  clock: Clock;
  /** Roots and publishes the outputs of a build queued already built. */
  finisher?: StepFinisher;
  /** A build's final row committed. */
  buildFinished(id: number): void;
}

/** A permanent failure as its rows record it. */
interface Failure {
  status: number;
  errorMsg: string;
  machine: string;
  startTime: number;
  stopTime: number;
  logFile: string;
  cacheable: boolean;
  /** Rounds the builder ran (determinism checks), when it built. */
  rounds?: BuildRounds;
}

type Finished = Exclude<StepOutcome, { kind: 'transient' }>;
type Transient = Extract<StepOutcome, { kind: 'transient' }>;

/**
 * Turns step results into database writes and graph events. The step's new
 * state is applied at once, so that a build loaded while the result is being
 * written sees it (a finished step makes it cached, a failed one a cached
 * failure); the write follows, and only after it commits are dependents
 * released and builds removed from the graph. Every write goes through the
 * result writer, so it waits out a database outage.
 */
export class StepResults {
  /**
   * Builds that meet a failed step as they load end in shared transactions,
   * one at a time: thousands of dependents of one failure cost a few
   * transactions on one connection, not one each.
   */
  /**
   * Unfinished builds that have had an attempt's row: the first one's start
   * also starts the build. A build leaves it when it ends here, so the set
   * holds the running builds, not every build of the runner's life.
   */
  private readonly startedBuilds = new Set<number>();
  /**
   * Steps that failed for good in this run with a status FailedPaths does not
   * record (3, 9, …), while the graph still holds them: a build loaded then
   * ends with that status propagated (as a dependent of the write would),
   * not as a cached failure (whose status for a dependent is always 2).
   */
  private readonly uncachedFailures = new WeakMap<StepRecord, { buildId: number } & Failure>();
  private readonly cachedFailures: Coalescer<Parameters<SchedulerDb['buildsCachedFailure']>[0][number], boolean>;

  constructor(private readonly o: StepResultsOptions) {
    this.cachedFailures = new Coalescer(
      async (list) => {
        const ended = new Set(await o.writer.persist(() => o.db.buildsCachedFailure(list)));
        return list.map((a) => ended.has(a.buildId));
      },
      { maxBatch: 1000, maxInFlight: 1, lingerMs: 20, maxWaitMs: 1000 },
    );
  }

  /** A build just loaded that needs no building ends as cached, or as a cached failure. */
  async loaded(q: QueuedBuild, r: AddBuildResult): Promise<void> {
    const { db, writer } = this.o;
    const now = unixNow(this.o.clock.now());
    if (r.kind === 'cached') {
      await this.ensurePublished(q.id, r.outputs);
      const readOutputs = outputsReader(this.o.finisher, r.outputs, (err) =>
        this.o.log.error({ build: q.id, err: String((err as Error)?.message ?? err) }, 'cannot read the outputs of a build queued already built'),
      );
      if (await writer.persist(() => db.buildCached({ buildId: q.id, now, outputs: r.outputs, readOutputs }))) this.buildEnded(q.id, true, true);
    } else if (r.kind === 'cachedFailure') {
      const f = this.uncachedFailures.get(r.failedStep);
      if (f) return this.propagatedFailure(q, r, f);
      if (await this.cachedFailures.load({ buildId: q.id, failedDrvPath: r.failedDrvPath, system: r.failedSystem, own: r.own, now, outputs: r.failedOutputs })) {
        this.buildEnded(q.id, false, true);
      }
    }
  }

  /**
   * A runnable step fails because `failed` did (its resolved derivation's
   * step, failed in this run and still in the graph): its dependents fail
   * with it in memory, and the builds that need it end as a build loaded
   * then would (the status propagated, or a cached failure of `failed`).
   */
  async failedAs(step: StepRecord, failed: StepRecord): Promise<void> {
    const { graph } = this.o;
    if (step.state !== 'runnable') return;
    graph.failAs(step, failed);
    const builds = graph.dependentBuilds(step);
    const f = this.uncachedFailures.get(failed);
    this.o.log.info({ drv: step.drvPath, failed: failed.drvPath, builds: builds.map((b) => b.id) }, 'step fails with the step it resolved to');
    const now = unixNow(this.o.clock.now());
    const ended = f
      ? await this.o.writer.persist(() =>
          this.o.db.dependentsFailed({
            failedBuildId: f.buildId, drvPath: failed.drvPath, system: failed.platform.system, status: f.status, errorMsg: f.errorMsg, machine: f.machine, stopTime: f.stopTime,
            builds: builds.map((b) => ({ id: b.id, own: b.toplevel === step })), outputs: failed.outputs,
          }),
        )
      : builds.length === 0
        ? []
        : await this.o.writer.persist(() =>
            this.o.db.buildsCachedFailure(builds.map((b) => ({ buildId: b.id, failedDrvPath: failed.drvPath, system: failed.platform.system, own: b.toplevel === step, now, outputs: failed.outputs }))),
          );
    for (const id of ended) this.buildEnded(id, false, !f);
    for (const b of builds) graph.removeBuild(b);
  }

  /** A build loaded while a step it needs had failed (not cacheable): the step's status, propagated from its build. */
  private async propagatedFailure(q: QueuedBuild, r: Extract<AddBuildResult, { kind: 'cachedFailure' }>, f: { buildId: number } & Failure): Promise<void> {
    const ended = await this.o.writer.persist(() =>
      this.o.db.dependentsFailed({
        failedBuildId: f.buildId,
        drvPath: r.failedDrvPath,
        system: r.failedSystem,
        status: f.status,
        errorMsg: f.errorMsg,
        machine: f.machine,
        stopTime: f.stopTime,
        builds: [{ id: q.id, own: r.own }],
        outputs: r.failedOutputs,
      }),
    );
    if (ended.includes(q.id)) this.buildEnded(q.id, false, false);
  }

  /** The build an attempt of `step` records its row under (src/actors/row-build.ts). */
  rowBuildId(step: StepRecord): number {
    return this.rowBuild(step)?.id ?? step.lowestBuildId;
  }

  /**
   * An attempt of `step` on `machine` begins (`now`, ms): its row goes under
   * `buildId` (rowBuildId), written with the other starts of the dispatch
   * round (ResultWriter.started).
   */
  started(step: StepRecord, buildId: number, machine: string, now: number): Promise<number | null> {
    const firstStepOfBuild = !this.startedBuilds.has(buildId);
    if (firstStepOfBuild) this.startedBuilds.add(buildId);
    return this.o.writer.started({ buildId, drvPath: step.drvPath, system: step.platform.system, machine, startTime: unixNow(now), outputs: step.outputs, firstStepOfBuild });
  }

  /** The builder built the step (or it failed for good): counted, charged to its jobsets, applied, written. */
  finished(aj: ActiveJob, outcome: Finished): void {
    const { graph, writer } = this.o;
    this.o.stats.stepDone(aj.step, aj.machine.id, aj.startedAt, outcome, this.o.clock.now());
    if (outcome.kind === 'success') {
      graph.transition(aj.step, outcome.nixSupport.failed ? 'FAIL_WITH_OUTPUT' : 'SUCCEED', outcome.outputs);
      writer.track(this.succeeded(aj, outcome, aj.step.builds.filter((b) => !b.done)));
    } else {
      graph.transition(aj.step, 'FAIL');
      writer.track(
        this.failed(aj.step, aj, {
          status: outcome.status,
          errorMsg: outcome.errorMsg,
          machine: aj.machine.id,
          startTime: outcome.startTime,
          stopTime: outcome.stopTime,
          logFile: outcome.logFile,
          // A build failure and a non-deterministic build are cached (C++ build-remote.cc:383-410 canCache).
          cacheable: outcome.status === BuildStatus.Failed || outcome.status === BuildStatus.NotDeterministic,
          rounds: { timesBuilt: outcome.timesBuilt, isNonDeterministic: outcome.isNonDeterministic },
        }),
      );
    }
  }

  /**
   * The attempt ended transiently and the dispatcher decided what `next`:
   * its row is aborted; once retries are used up (`abandoned`) the step
   * fails for good.
   */
  transient(aj: ActiveJob, outcome: Transient, next: 'done' | 'retrying' | 'abandoned'): void {
    const { counters } = this.o.stats;
    this.o.log.warn({ build: aj.buildId, drv: aj.step.drvPath, machine: aj.machine.id, err: outcome.errorMsg }, 'step failed transiently');
    counters.stepsTransient++;
    if (outcome.machineFault) this.o.stats.machine(aj.machine.id).machineFailures++;
    if (next === 'retrying') this.o.stats.retried(aj.step);
    if (next === 'abandoned') {
      const stopTime = unixNow(this.o.clock.now());
      this.uncachedFailures.set(aj.step, { buildId: aj.buildId, status: BuildStatus.Aborted, errorMsg: outcome.errorMsg, machine: aj.machine.id, startTime: unixNow(aj.startedAt), stopTime, logFile: '', cacheable: false });
    }
    this.o.writer.track(this.aborted(aj, outcome.errorMsg, next === 'abandoned'));
  }

  /** A step that will never build (no machine for its platform) fails every build that needs it. */
  unsupported(step: StepRecord): void {
    this.o.graph.transition(step, 'UNSUPPORTED');
    this.o.stats.counters.stepsUnsupported++;
    const buildId = this.rowBuild(step)?.id;
    if (buildId === undefined) return;
    // Hydra's text (Rust runner state/mod.rs:3567, C++ dispatcher.cc:384, `unsupported system type '{system}'`), no machine, start = stop = now.
    const errorMsg = `unsupported system type '${step.platform.system}'`;
    this.o.writer.track(this.failedUnbuilt(step, { buildId, row: Promise.resolve(null) }, BuildStatus.Unsupported, errorMsg, '', this.o.clock.now()));
  }

  /**
   * No build needs the running step any more: its row ends as cancelled (4)
   * from its real start, without an error text, as Hydra's runners write it
   * (Rust state/mod.rs:1347-1355 fail_step(Cancelled, error_msg None)).
   */
  noLongerNeeded(aj: ActiveJob): void {
    const { db, writer } = this.o;
    this.o.log.info({ build: aj.buildId, drv: aj.step.drvPath, machine: aj.machine.id }, 'step no longer needed; aborted');
    writer.track(
      writer.closing(aj.buildId, aj.row, (nr) =>
        nr === null
          ? Promise.resolve()
          : db.stepAborted({ buildId: aj.buildId, stepnr: nr, status: 4, errorMsg: null, startTime: unixNow(aj.startedAt), stopTime: unixNow(this.o.clock.now()), machine: aj.machine.id }),
      ),
    );
  }

  /**
   * The outputs of a build queued already built are rooted and put in every
   * cache before it ends. A failure (a full disk, a cache away) is logged
   * and the build still ends as cached: its outputs are valid here, and the
   * next build of them publishes them again.
   */
  private async ensurePublished(buildId: number, outputs: readonly { name: string; path: string | null }[]): Promise<void> {
    const paths = outputs.flatMap((o) => (o.path === null ? [] : [o.path]));
    if (!this.o.finisher?.alreadyBuilt || paths.length === 0) return;
    try {
      await this.o.finisher.alreadyBuilt(paths);
    } catch (err) {
      this.o.log.error({ build: buildId, outputs: paths, err: String((err as Error)?.message ?? err) }, 'cannot root or publish the outputs of a build queued already built');
    }
  }

  /** The build a step's rows go under (src/actors/row-build.ts). */
  private rowBuild(step: StepRecord): BuildRecord | undefined {
    return rowBuild(this.o.graph, step);
  }

  private buildEnded(id: number, succeeded: boolean, cached: boolean): void {
    this.startedBuilds.delete(id);
    this.o.stats.buildEnded(succeeded, cached);
    this.o.buildFinished(id);
  }

  private async succeeded(aj: ActiveJob, outcome: Extract<StepOutcome, { kind: 'success' }>, builds: BuildRecord[]): Promise<void> {
    const { step } = aj;
    const { graph } = this.o;
    const ended = await this.o.writer.closing(aj.buildId, aj.row, (stepnr) =>
      this.o.writer.succeeded({
        buildId: aj.buildId,
        stepnr,
        drvPath: step.drvPath,
        system: step.platform.system,
        machine: aj.machine.id,
        startTime: outcome.startTime,
        stopTime: outcome.stopTime,
        overheadMs: outcome.overheadMs,
        logFile: outcome.logFile,
        outputs: outcome.outputs,
        closureSize: outcome.closureSize,
        failedWithOutput: outcome.nixSupport.failed,
        releaseName: outcome.nixSupport.releaseName,
        products: outcome.nixSupport.products,
        metrics: outcome.nixSupport.metrics,
        timesBuilt: outcome.timesBuilt,
        isNonDeterministic: outcome.isNonDeterministic,
        builds: builds.map((b) => ({ id: b.id, isCachedBuild: b.id !== aj.buildId })),
      }),
    );
    for (const id of ended) this.buildEnded(id, !outcome.nixSupport.failed, false);
    for (const b of graph.completeSuccess(step)) graph.removeBuild(b);
  }

  private async aborted(aj: ActiveJob, errorMsg: string, abandoned: boolean): Promise<void> {
    if (abandoned) {
      // Retries used up: this attempt's row carries the final status 3.
      await this.failedUnbuilt(aj.step, { buildId: aj.buildId, row: aj.row }, BuildStatus.Aborted, errorMsg, aj.machine.id, aj.startedAt);
    } else {
      await this.o.writer.closing(aj.buildId, aj.row, (stepnr) =>
        stepnr === null
          ? Promise.resolve()
          : this.o.db.stepAborted({ buildId: aj.buildId, stepnr, status: 3, errorMsg: errorMsg || null, startTime: unixNow(aj.startedAt), stopTime: unixNow(this.o.clock.now()), machine: aj.machine.id }),
      );
    }
  }

  /** A permanent failure with no build result behind it (no log, nothing cacheable), from `startedAt` (ms) to now. */
  private failedUnbuilt(step: StepRecord, at: { buildId: number; row: Promise<number | null> }, status: number, errorMsg: string, machine: string, startedAt: number): Promise<void> {
    const f = { status, errorMsg, machine, startTime: unixNow(startedAt), stopTime: unixNow(this.o.clock.now()), logFile: '', cacheable: false };
    return this.failed(step, at, f);
  }

  /**
   * Writes a permanent failure: the step's row (updated, or inserted when it
   * never got one) and every build that needs the step. Builds that attached
   * to a dependent of the step while that write was in flight are failed in
   * a follow-up write, so none is left waiting on a failed step.
   */
  private async failed(step: StepRecord, at: { buildId: number; row: Promise<number | null> }, f: Failure): Promise<void> {
    this.o.log.warn({ build: at.buildId, drv: step.drvPath, machine: f.machine, status: f.status, err: f.errorMsg }, 'step failed');
    if (!f.cacheable) this.uncachedFailures.set(step, { buildId: at.buildId, ...f });
    const { db, graph, writer } = this.o;
    const handled = new Set(graph.dependentBuilds(step));
    const ended = await writer.closing(at.buildId, at.row, (stepnr) =>
      db.stepFailed({
        buildId: at.buildId,
        stepnr,
        drvPath: step.drvPath,
        system: step.platform.system,
        machine: f.machine,
        status: f.status,
        errorMsg: f.errorMsg,
        startTime: f.startTime,
        stopTime: f.stopTime,
        logFile: f.logFile,
        ...f.rounds,
        builds: [...handled].map((b) => ({ id: b.id, own: b.toplevel === step })),
        cacheablePaths: f.cacheable ? step.outputs.flatMap((o) => (o.path ? [o.path] : [])) : [],
        outputs: step.outputs,
      }),
    );
    for (;;) {
      const late = graph.dependentBuilds(step).filter((b) => !handled.has(b));
      if (late.length === 0) break;
      for (const b of late) handled.add(b);
      ended.push(
        ...(await writer.persist(() =>
          db.dependentsFailed({
            failedBuildId: at.buildId,
            drvPath: step.drvPath,
            system: step.platform.system,
            status: f.status,
            errorMsg: f.errorMsg,
            machine: f.machine,
            stopTime: f.stopTime,
            builds: late.map((b) => ({ id: b.id, own: b.toplevel === step })),
            outputs: step.outputs,
          }),
        )),
      );
    }
    for (const id of ended) this.buildEnded(id, false, false);
    for (const b of handled) this.o.graph.removeBuild(b);
  }
}

/**
 * FailedPaths look-ups for loaders: concurrent look-ups share queries and
 * hold at most two connections.
 */
export function failedPathsCache(db: SchedulerDb): FailureCache {
  const failed = new Coalescer<string, boolean>(
    async (paths) => {
      const set = await db.failedPaths([...new Set(paths)]);
      return paths.map((p) => set.has(p));
    },
    { maxBatch: 1000, maxInFlight: 2, lingerMs: 0 },
  );
  return { isFailed: async (paths) => (await Promise.all(paths.map((p) => failed.load(p)))).some(Boolean) };
}
