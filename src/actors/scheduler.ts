import type { Logger } from '../util/logger.ts';
import { BuildStatus, StepBusy, type StepBusyCode } from '../db/status.ts';
import type { BuilderPort, StepJob, StepOutcome } from './builder-port.ts';
import { unixNow } from './builder-port.ts';
import { Dispatcher } from './dispatcher.ts';
import type { MachineFreeFn, MachineRecord, MachineSortFn } from './machine-record.ts';
import type { BuildRecord, Clock, JobsetRecord, SchedulerStore, StepRecord } from './model.ts';
import { systemClock } from './model.ts';
import type { StepSortFn } from './runnable-queue.ts';
import type { SchedulerDb } from './scheduler-db.ts';
import { StepGraph, type AddBuildResult, type QueuedBuild } from './step-graph.ts';
import type { StepState } from '../machines/index.ts';
import { Batcher } from '../util/batcher.ts';

export interface SchedulerConfig {
  stepSortFn: StepSortFn;
  machineSortFn: MachineSortFn;
  machineFreeFn: MachineFreeFn;
  maxRetries: number;
  retryInterval: number;
  retryBackoff: number;
  maxUnsupportedTimeInS: number;
  maxLogSize: number;
  maxOutputSize: number;
  maxSilentTime: number;
  buildTimeout: number;
}

export interface SchedulerOptions {
  config: SchedulerConfig;
  db: SchedulerDb;
  store: SchedulerStore;
  log: Logger;
  clock?: Clock;
}

/** One attempt of a step on a machine. */
interface ActiveJob {
  readonly job: StepJob;
  readonly step: StepRecord;
  readonly machine: MachineRecord;
  readonly port: BuilderPort;
  /** The build whose BuildSteps row records this attempt. */
  readonly buildId: number;
  /** Resolves to the row's stepnr once written (null if the write failed). */
  readonly row: Promise<number | null>;
  readonly startedAt: number;
}

export interface SchedulerCounters {
  buildsLoaded: number;
  buildsFinished: number;
  buildsSucceeded: number;
  buildsFailed: number;
  buildsCached: number;
  stepsStarted: number;
  stepsFinished: number;
  stepsRetried: number;
  stepsUnsupported: number;
}

const FAIR_SHARE_WINDOW_S = 24 * 3600;

/**
 * Composes the step graph, the dispatcher, builders and the database: a step
 * result is written in one transaction and only then applied in memory, so a
 * crash at any point leaves the database in a state from which a restart
 * reaches the same outcome.
 */
export class Scheduler {
  readonly graph: StepGraph;
  readonly dispatcher: Dispatcher;
  readonly jobsets = new Map<number, JobsetRecord>();
  private readonly ports = new Map<string, BuilderPort>();
  private readonly active = new Map<StepRecord, ActiveJob>();
  private readonly startedBuilds = new Set<number>();
  private readonly clock: Clock;
  private readonly inflight = new Set<Promise<unknown>>();
  private jobSeq = 0;
  readonly counters: SchedulerCounters = {
    buildsLoaded: 0, buildsFinished: 0, buildsSucceeded: 0, buildsFailed: 0, buildsCached: 0,
    stepsStarted: 0, stepsFinished: 0, stepsRetried: 0, stepsUnsupported: 0,
  };
  /** Listeners for finished builds (tests, status, visualizer). */
  onBuildFinished: ((buildId: number) => void) | null = null;

  constructor(private readonly o: SchedulerOptions) {
    this.clock = o.clock ?? systemClock;
    const failed = new Batcher<string, boolean>(async (paths) => {
      const set = await o.db.failedPaths(paths);
      return new Map(paths.map((p) => [p, set.has(p)]));
    }, false);
    this.graph = new StepGraph({
      store: o.store,
      failures: { isFailed: async (paths) => (await Promise.all(paths.map((p) => failed.load(p)))).some(Boolean) },
      clock: this.clock,
      trackCriticalPath: o.config.stepSortFn === 'WithCriticalPath',
      listener: {
        runnable: (s) => this.dispatcher.enqueue(s),
        reprioritized: (s) => this.dispatcher.reprioritize(s),
        released: (s, prev) => this.released(s, prev),
      },
    });
    const c = o.config;
    this.dispatcher = new Dispatcher({
      clock: this.clock,
      stepSortFn: c.stepSortFn,
      machineSortFn: c.machineSortFn,
      machineFreeFn: c.machineFreeFn,
      maxRetries: c.maxRetries,
      retryInterval: c.retryInterval,
      retryBackoff: c.retryBackoff,
      maxUnsupportedTimeInS: c.maxUnsupportedTimeInS,
      stepEvent: (s, e) => this.graph.transition(s, e),
      assign: (s, m) => this.assign(s, m),
      unsupported: (s) => this.track(this.failSteps(s, null, BuildStatus.Unsupported, 'unsupported system type', '')),
    });
  }

  // ------------------------------------------------------------ machines

  addMachine(m: MachineRecord, port: BuilderPort): void {
    this.ports.set(m.id, port);
    this.dispatcher.addMachine(m);
  }

  /** The machine is gone: its jobs are retried elsewhere (transient, machine at fault). */
  removeMachine(id: string, event: 'GRACE_EXPIRED' | 'REMOVE' | 'DRAINED' | 'DISCONNECTED' = 'REMOVE'): void {
    const m = this.dispatcher.machines.get(id);
    if (!m) return;
    for (const step of [...m.jobs]) {
      const aj = this.active.get(step);
      if (aj) this.outcome(aj, { kind: 'transient', errorMsg: `machine ${id} lost`, machineFault: true });
    }
    this.dispatcher.removeMachine(m, event);
    this.ports.delete(id);
  }

  // ------------------------------------------------------------ builds

  jobsetRecord(row: { jobsetId: number; project: string; jobset: string }, shares = 100): JobsetRecord {
    let j = this.jobsets.get(row.jobsetId);
    if (!j) this.jobsets.set(row.jobsetId, (j = { id: row.jobsetId, project: row.project, name: row.jobset, shares, seconds: 0, charges: [] }));
    return j;
  }

  /** Loads one queued build into the graph and records the outcome of builds that need no building. */
  async addBuild(q: QueuedBuild): Promise<AddBuildResult['kind']> {
    this.counters.buildsLoaded++;
    const r = await this.graph.addBuild(q);
    const now = unixNow(this.clock.now());
    if (r.kind === 'cached') {
      const outputs = (await this.o.store.readDerivation(q.drvPath)).outputs;
      if (await this.o.db.buildCached({ buildId: q.id, now, outputs })) this.buildEnded(q.id, true, true);
    } else if (r.kind === 'cachedFailure') {
      const system = (await this.o.store.readDerivation(r.failedDrvPath)).system;
      if (await this.o.db.buildCachedFailure({ buildId: q.id, failedDrvPath: r.failedDrvPath, system, own: r.own, now })) {
        this.buildEnded(q.id, false, true);
      }
    }
    return r.kind;
  }

  /** A build is no longer queued (cancelled, deleted, finished elsewhere): drop it. */
  dropBuild(id: number): void {
    const b = this.graph.builds.get(id);
    if (b) this.graph.removeBuild(b);
  }

  bump(id: number, globalPriority: number): void {
    const b = this.graph.builds.get(id);
    if (b && b.globalPriority !== globalPriority) this.graph.bump(b, globalPriority);
  }

  private buildEnded(id: number, succeeded: boolean, cached: boolean): void {
    this.counters.buildsFinished++;
    if (cached) this.counters.buildsCached++;
    if (succeeded) this.counters.buildsSucceeded++;
    else this.counters.buildsFailed++;
    this.onBuildFinished?.(id);
  }

  // ------------------------------------------------------------ dispatch

  /** The build a step's row is recorded under: the lowest-id build that needs it. */
  private buildFor(step: StepRecord): BuildRecord | undefined {
    return this.graph.builds.get(step.lowestBuildId) ?? this.graph.dependentBuilds(step)[0];
  }

  private assign(step: StepRecord, m: MachineRecord): void {
    const port = this.ports.get(m.id)!;
    const build = this.buildFor(step);
    const c = this.o.config;
    const job: StepJob = {
      jobId: `${step.id}.${++this.jobSeq}`,
      drvPath: step.drvPath,
      outputs: step.outputs,
      maxSilentTime: step.maxSilent || c.maxSilentTime,
      buildTimeout: step.timeout || c.buildTimeout,
      maxLogSize: c.maxLogSize,
      maxOutputSize: c.maxOutputSize,
    };
    const buildId = build?.id ?? step.lowestBuildId;
    const first = !this.startedBuilds.has(buildId);
    this.startedBuilds.add(buildId);
    const row = this.o.db
      .stepStarted({
        buildId,
        drvPath: step.drvPath,
        system: step.platform.system,
        machine: m.id,
        startTime: unixNow(this.clock.now()),
        outputs: step.outputs,
        firstStepOfBuild: first,
      })
      .catch((err: unknown) => {
        this.o.log.error({ build: buildId, drv: step.drvPath, err: String(err) }, 'could not record step start');
        return null;
      });
    const aj: ActiveJob = { job, step, machine: m, port, buildId, row, startedAt: this.clock.now() };
    this.active.set(step, aj);
    this.counters.stepsStarted++;
    this.o.log.debug({ build: buildId, drv: step.drvPath, machine: m.id, job: job.jobId }, 'step dispatched');
    port.start(
      job,
      (outcome) => this.outcome(aj, outcome),
      (busy) => this.progress(aj, busy),
    );
  }

  private progress(aj: ActiveJob, busy: StepBusyCode): void {
    if (this.active.get(aj.step) !== aj) return;
    if (busy === StepBusy.Building && aj.step.state === 'dispatched') this.graph.transition(aj.step, 'START');
    void aj.row.then((nr) => (nr === null ? undefined : this.o.db.stepBusy(aj.buildId, nr, busy))).catch(() => {});
  }

  private outcome(aj: ActiveJob, outcome: StepOutcome): void {
    if (this.active.get(aj.step) !== aj) return; // aborted or already reported
    this.active.delete(aj.step);
    if (aj.step.state === 'dispatched' && outcome.kind !== 'transient') this.graph.transition(aj.step, 'START');
    this.track(this.applyOutcome(aj, outcome));
  }

  private track(p: Promise<unknown>): void {
    const t = p.catch((err: unknown) => this.o.log.error({ err: String((err as Error)?.stack ?? err) }, 'scheduler write failed'));
    this.inflight.add(t);
    void t.finally(() => this.inflight.delete(t));
  }

  private async applyOutcome(aj: ActiveJob, outcome: StepOutcome): Promise<void> {
    const { step, machine } = aj;
    const stepnr = await aj.row;
    const now = unixNow(this.clock.now());
    if (outcome.kind === 'transient' || stepnr === null) {
      const errorMsg = outcome.kind === 'transient' ? outcome.errorMsg : 'step row could not be written';
      this.o.log.warn({ build: aj.buildId, drv: step.drvPath, machine: machine.id, err: errorMsg }, 'step failed transiently');
      if (outcome.kind === 'transient' && outcome.machineFault) this.dispatcher.machineFailed(machine);
      const live = step.state === 'dispatched' || step.state === 'building';
      const next = this.dispatcher.jobEnded(step, machine, live ? 'transient' : 'done');
      if (next === 'retrying') this.counters.stepsRetried++;
      if (next === 'abandoned') {
        // Retries used up: this attempt's row carries the final status 3.
        await this.failSteps(step, stepnr === null ? null : { buildId: aj.buildId, stepnr, startTime: unixNow(aj.startedAt) }, BuildStatus.Aborted, errorMsg, machine.id);
      } else if (stepnr !== null) {
        await this.o.db.stepAborted({ buildId: aj.buildId, stepnr, status: 3, errorMsg, stopTime: now, machine: machine.id });
      }
      return;
    }
    this.dispatcher.machineSucceeded(machine);
    this.charge(step, outcome.stopTime - outcome.startTime);
    if (outcome.kind === 'success') {
      const toplevel = step.builds.filter((b) => !b.done);
      const ended = await this.o.db.stepSucceeded({
        buildId: aj.buildId,
        stepnr,
        machine: machine.id,
        startTime: outcome.startTime,
        stopTime: outcome.stopTime,
        overheadMs: outcome.overheadMs,
        logFile: outcome.logFile,
        outputs: outcome.outputs,
        failedWithOutput: outcome.nixSupport.failed,
        releaseName: outcome.nixSupport.releaseName,
        products: outcome.nixSupport.products,
        metrics: outcome.nixSupport.metrics,
        builds: toplevel.map((b) => ({ id: b.id, isCachedBuild: b.id !== aj.buildId })),
      });
      this.counters.stepsFinished++;
      this.dispatcher.jobEnded(step, machine, 'done');
      if (step.state !== 'building') return; // cancelled while the write was in flight
      this.graph.transition(step, outcome.nixSupport.failed ? 'FAIL_WITH_OUTPUT' : 'SUCCEED');
      for (const id of ended) this.buildEnded(id, !outcome.nixSupport.failed, false);
      const builds = this.graph.completeSuccess(step);
      for (const b of builds) this.graph.removeBuild(b);
      return;
    }
    // A permanent failure fails every build that needs the step.
    const dependents = this.graph.dependentBuilds(step);
    const ended = await this.o.db.stepFailed({
      buildId: aj.buildId,
      stepnr,
      drvPath: step.drvPath,
      system: step.platform.system,
      machine: machine.id,
      status: outcome.status,
      errorMsg: outcome.errorMsg,
      startTime: outcome.startTime,
      stopTime: outcome.stopTime,
      logFile: outcome.logFile,
      builds: dependents.map((b) => ({ id: b.id, own: b.toplevel === step })),
      cacheablePaths: outcome.status === BuildStatus.Failed ? step.outputs.flatMap((o) => (o.path ? [o.path] : [])) : [],
    });
    this.counters.stepsFinished++;
    if (step.state === 'building') this.graph.transition(step, 'FAIL');
    this.dispatcher.jobEnded(step, machine, 'done');
    for (const id of ended) this.buildEnded(id, false, false);
    for (const b of dependents) this.graph.removeBuild(b);
  }

  /**
   * A step that will not build (unsupported, retries exhausted) fails every
   * build that needs it; `row` is its last attempt's row, if it had one.
   */
  private async failSteps(step: StepRecord, row: { buildId: number; stepnr: number; startTime: number } | null, status: number, errorMsg: string, machine: string): Promise<void> {
    if (step.state === 'runnable') this.graph.transition(step, 'UNSUPPORTED');
    const dependents = this.graph.dependentBuilds(step);
    const build = row?.buildId ?? this.buildFor(step)?.id;
    if (build === undefined) return;
    if (status === BuildStatus.Unsupported) this.counters.stepsUnsupported++;
    const now = unixNow(this.clock.now());
    const ended = await this.o.db.stepFailed({
      buildId: build,
      stepnr: row?.stepnr ?? null,
      drvPath: step.drvPath,
      system: step.platform.system,
      machine,
      status,
      errorMsg,
      startTime: row?.startTime ?? now,
      stopTime: now,
      logFile: '',
      builds: dependents.map((b) => ({ id: b.id, own: b.toplevel === step })),
      cacheablePaths: [],
    });
    for (const id of ended) this.buildEnded(id, false, false);
    for (const b of dependents) this.graph.removeBuild(b);
  }

  private released(step: StepRecord, previous: StepState): void {
    if (previous === 'dispatched' || previous === 'building') {
      const aj = this.active.get(step);
      if (aj) {
        this.active.delete(step);
        aj.port.abort(aj.job.jobId);
        this.dispatcher.jobEnded(step, aj.machine, 'done');
        this.o.log.info({ build: aj.buildId, drv: step.drvPath, machine: aj.machine.id }, 'step no longer needed; aborted');
        this.track(
          aj.row.then((nr) =>
            nr === null
              ? undefined
              : this.o.db.stepAborted({ buildId: aj.buildId, stepnr: nr, status: 4, errorMsg: 'no build needs this step any more', stopTime: unixNow(this.clock.now()), machine: aj.machine.id }),
          ),
        );
      }
    } else {
      this.dispatcher.forget(step, previous);
    }
  }

  /** Fair share: a finished step's build time is charged to each of its jobsets. */
  private charge(step: StepRecord, seconds: number): void {
    if (seconds <= 0) return;
    const now = this.clock.now();
    for (const j of step.jobsets) {
      j.seconds += seconds;
      j.charges.push({ at: now, seconds });
      while (j.charges.length > 0 && j.charges[0]!.at < now - FAIR_SHARE_WINDOW_S * 1000) j.seconds -= j.charges.shift()!.seconds;
    }
  }

  // ------------------------------------------------------------ lifecycle

  get activeJobs(): number {
    return this.active.size;
  }

  /** Resolves when every pending database write has settled. */
  async settle(): Promise<void> {
    while (this.inflight.size > 0) await Promise.all([...this.inflight]);
  }

  /**
   * Drain: no new dispatch; wait up to `graceMs` for running steps, then abort
   * the rest, writing their rows as aborted so none is left busy.
   */
  async drain(graceMs: number): Promise<void> {
    this.dispatcher.pause();
    const deadline = this.clock.now() + graceMs;
    while (this.active.size > 0 && this.clock.now() < deadline) await new Promise((r) => setTimeout(r, 50));
    for (const aj of [...this.active.values()]) {
      aj.port.abort(aj.job.jobId);
      this.outcome(aj, { kind: 'transient', errorMsg: 'runner stopping', machineFault: false });
    }
    await this.settle();
    this.dispatcher.close();
  }
}
