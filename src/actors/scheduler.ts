import type { Logger } from '../util/logger.ts';
import { BuildStatus, StepBusy, type StepBusyCode } from '../db/status.ts';
import type { BuilderPort, StepFinisher, StepJob, StepOutcome } from './builder-port.ts';
import { finishingPort } from './finishing-port.ts';
import { unixNow } from './builder-port.ts';
import { Dispatcher, type DispatcherOptions } from './dispatcher.ts';
import { MachineActor } from './machine-actor.ts';
import type { MachineRecord } from './machine-record.ts';
import type { BuildRecord, Clock, JobsetRecord, SchedulerStore, StepRecord } from './model.ts';
import { systemClock } from './model.ts';
import type { SchedulerDb } from '../db/scheduler-db-interface.ts';
import { StepGraph, type AddBuildResult, type QueuedBuild } from './step-graph.ts';
import type { StepState } from '../machines/index.ts';
import { Coalescer } from './coalescer.ts';
import { isConnectionError } from '../db/errors.ts';

export type SchedulerConfig = Pick<
  DispatcherOptions,
  'stepSortFn' | 'machineSortFn' | 'machineFreeFn' | 'maxRetries' | 'retryInterval' | 'retryBackoff' | 'maxUnsupportedTimeInS'
> & {
  dispatchTriggerTimerInS?: number;
  maxLogSize: number;
  maxOutputSize: number;
  maxSilentTime: number;
  buildTimeout: number;
};

export interface SchedulerOptions {
  config: SchedulerConfig;

  db: SchedulerDb;
  store: SchedulerStore;
  log: Logger;
  clock?: Clock;
  /** Runs after each result, before the step counts as done (roots, uploads). */
  finisher?: StepFinisher;
  /** Per assignment: the runner's own delay and the step's whole wait (see DispatcherOptions). */
  onDispatch?: (latencyMs: number, waitMs: number) => void;
  /** Result writes wait for it to open (the runner holds its lock); without it they go at once. */
  gate?: WriteGate;
  /** Result writes waiting or in flight beyond which dispatch pauses (backpressure). */
  maxPendingWrites?: number;
}

/**
 * Open while this runner may write to the database: it holds the runner lock
 * (src/db/runner-lock.ts). While the database is away the lock is being
 * re-taken and writes wait.
 */
export interface WriteGate {
  /** Resolves while (or once) writes may go ahead; rejects once they never will (lock taken, given up). */
  whenOpen(): Promise<void>;
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
  /** Latest progress report (BuildSteps.busy). */
  busy: StepBusyCode;
  /** The busy value last written to the row, and whether a write is scheduled. */
  busyWritten: StepBusyCode;
  busyWriteScheduled: boolean;
}

/**
 * How long a phase must last before BuildSteps.busy records it: a short
 * step's phases pass in milliseconds, and writing each would cost more
 * database round trips than the step itself.
 */
export const BUSY_WRITE_DELAY_MS = 500;

/** Per-machine totals, as the status API reports them (Hydra's machine stats). */
export interface MachineStats {
  stepsDone: number;
  succeeded: number;
  failed: number;
  /** Wall time from dispatch to result, and the build's own time as the builder reported it. */
  totalStepMs: number;
  totalBuildMs: number;
  lastStepAt: number;
  /** Attempts lost to the machine's fault (disconnects, preparation failures). */
  machineFailures: number;
}

/** A step running on a machine, for status pages. */
export interface RunningStep {
  readonly jobId: string;
  readonly step: StepRecord;
  readonly machine: string;
  readonly buildId: number;
  readonly startedAt: number;
  readonly busy: StepBusyCode;
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
  stepsSucceeded: number;
  /** Permanent failures (the step's own; not those of dependents). */
  stepsFailed: number;
  /** Attempts that ended transiently (machine lost, preparation or upload failed). */
  stepsTransient: number;
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
  /** Per-step debug lines cost allocations on the dispatch path; build them only when wanted. */
  private readonly debug: boolean;
  private stopping = false;
  private stopped!: () => void;
  /** Resolves when draining begins: writes waiting for the gate then give up. */
  private readonly stopWait = new Promise<void>((r) => (this.stopped = r));
  /** Why dispatch is paused besides draining (database outage, write backpressure). */
  private readonly holds = new Set<string>();
  /** Result writes waiting for the database or in flight (bounded: see maxPendingWrites). */
  private writes = 0;
  /** BuildSteps rows of this runner's attempts whose closing write has not landed: busy on purpose. */
  private readonly liveRows = new Map<string, { buildId: number; stepnr: number }>();
  readonly counters: SchedulerCounters = {
    buildsLoaded: 0, buildsFinished: 0, buildsSucceeded: 0, buildsFailed: 0, buildsCached: 0,
    stepsStarted: 0, stepsFinished: 0, stepsRetried: 0, stepsUnsupported: 0, stepsSucceeded: 0, stepsFailed: 0, stepsTransient: 0,
  };
  readonly machineStats = new Map<string, MachineStats>();
  /** Listeners for finished builds (tests, status, visualizer). */
  onBuildFinished: ((buildId: number) => void) | null = null;
  /**
   * Builds that meet a failed step as they load end in shared transactions,
   * one at a time: thousands of dependents of one failure cost a few
   * transactions on one connection, not one each.
   */
  private readonly cachedFailures = new Coalescer<Parameters<SchedulerDb['buildsCachedFailure']>[0][number], boolean>(
    async (list) => {
      const ended = new Set(await this.persist(() => this.o.db.buildsCachedFailure(list)));
      return list.map((a) => ended.has(a.buildId));
    },
    { maxBatch: 1000, maxInFlight: 1, lingerMs: 20, maxWaitMs: 1000 },
  );

  constructor(private readonly o: SchedulerOptions) {
    this.clock = o.clock ?? systemClock;
    this.debug = o.log.isLevelEnabled('debug');
    // Loaders' FailedPaths look-ups share queries and hold at most two connections.
    const failed = new Coalescer<string, boolean>(
      async (paths) => {
        const set = await o.db.failedPaths([...new Set(paths)]);
        return paths.map((p) => set.has(p));
      },
      { maxBatch: 1000, maxInFlight: 2, lingerMs: 0 },
    );
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
      dispatchTriggerTimerInS: c.dispatchTriggerTimerInS,
      stepEvent: (s, e) => this.graph.transition(s, e),
      assign: (s, m) => this.assign(s, m),
      unsupported: (s) => this.failUnsupported(s),
      onDispatch: o.onDispatch,
    });
  }

  /**
   * Applies a reloaded configuration: retry, capacity and limit settings take
   * effect at once; returns the keys whose change needs a restart.
   */
  reconfigure(c: SchedulerConfig): string[] {
    const old = this.o.config;
    const { maxRetries, retryInterval, retryBackoff, maxUnsupportedTimeInS, machineFreeFn } = c;
    this.dispatcher.reconfigure({ maxRetries, retryInterval, retryBackoff, maxUnsupportedTimeInS, machineFreeFn });
    const needRestart = (['stepSortFn', 'machineSortFn'] as const).filter((k) => old[k] !== c[k]);
    this.o.config = { ...c, stepSortFn: old.stepSortFn, machineSortFn: old.machineSortFn };
    return needRestart;
  }

  /** The machine ordering and capacity rules in force (status pages show scores and room). */
  get dispatcherConfig(): Pick<SchedulerConfig, 'machineSortFn' | 'machineFreeFn'> {
    return this.o.config;
  }

  // ------------------------------------------------------------ machines

  /**
   * Adds a machine: a MachineActor its owner drives (it sends JOINED), or a
   * plain record (a configured machine), whose actor is spawned here and
   * joins at once.
   */
  addMachine(m: MachineRecord, port: BuilderPort): MachineActor {
    const actor = MachineActor.from(m);
    this.ports.set(m.id, this.o.finisher ? finishingPort(port, this.o.finisher, (jobId) => this.builtOn(actor, jobId)) : port);
    this.dispatcher.addMachine(actor);
    if (actor !== m) actor.send({ type: 'JOINED' });
    return actor;
  }

  /** A builder is done with a job whose outputs are still being published: its slot is free. */
  private builtOn(m: MachineRecord, jobId: string): void {
    for (const step of m.jobs) {
      const aj = this.active.get(step);
      if (aj?.job.jobId === jobId) return this.dispatcher.releaseSlot(step, m);
    }
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
      if (await this.persist(() => this.o.db.buildCached({ buildId: q.id, now, outputs: r.outputs }))) this.buildEnded(q.id, true, true);
    } else if (r.kind === 'cachedFailure') {
      if (await this.cachedFailures.load({ buildId: q.id, failedDrvPath: r.failedDrvPath, system: r.failedSystem, own: r.own, now })) {
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
    // Hand the job over first; its row is written right after the round,
    // with the other starts of the round, in one transaction.
    const row = this.recordStart({
      buildId,
      drvPath: step.drvPath,
      system: step.platform.system,
      machine: m.id,
      startTime: unixNow(this.clock.now()),
      outputs: step.outputs,
      firstStepOfBuild: first,
    });
    void row.then((nr) => {
      if (nr !== null) this.liveRows.set(`${buildId}:${nr}`, { buildId, stepnr: nr });
    });
    const aj: ActiveJob = { job, step, machine: m, port, buildId, row, startedAt: this.clock.now(), busy: StepBusy.Preparing, busyWritten: StepBusy.Preparing, busyWriteScheduled: false };
    this.active.set(step, aj);
    this.counters.stepsStarted++;
    if (this.debug) this.o.log.debug({ build: buildId, drv: step.drvPath, machine: m.id, job: job.jobId }, 'step dispatched');
    port.start(
      job,
      (outcome) => this.outcome(aj, outcome),
      (busy) => this.progress(aj, busy),
    );
  }

  private pendingStarts: { start: Parameters<SchedulerDb['stepsStarted']>[0][number]; resolve: (nr: number | null) => void }[] = [];

  private recordStart(start: Parameters<SchedulerDb['stepsStarted']>[0][number]): Promise<number | null> {
    return new Promise((resolve) => {
      if (this.pendingStarts.length === 0) setImmediate(() => this.flushStarts());
      this.pendingStarts.push({ start, resolve });
    });
  }

  private flushStarts(): void {
    const all = this.pendingStarts;
    this.pendingStarts = [];
    for (let i = 0; i < all.length; i += 500) {
      const batch = all.slice(i, i + 500);
      const write = this.persist(() => this.o.db.stepsStarted(batch.map((b) => b.start))).then(
        (nrs) => batch.forEach((b, k) => b.resolve(nrs[k] ?? null)),
        (err: unknown) => {
          this.o.log.error({ err: String(err), steps: batch.length }, 'could not record step starts');
          for (const b of batch) b.resolve(null);
        },
      );
      this.track(write);
    }
  }

  private progress(aj: ActiveJob, busy: StepBusyCode): void {
    if (this.active.get(aj.step) !== aj) return;
    aj.busy = busy;
    if (busy === StepBusy.Building && aj.step.state === 'dispatched') this.graph.transition(aj.step, 'START');
    if (aj.busyWriteScheduled) return; // the scheduled write takes the latest phase
    aj.busyWriteScheduled = true;
    setTimeout(() => {
      aj.busyWriteScheduled = false;
      // Once the result is in, its write sets busy itself.
      if (this.active.get(aj.step) !== aj || aj.busy === aj.busyWritten) return;
      const value = aj.busy;
      aj.busyWritten = value;
      void aj.row.then((nr) => (nr === null ? undefined : this.o.db.stepBusy(aj.buildId, nr, value))).catch(() => {});
    }, BUSY_WRITE_DELAY_MS).unref();
  }

  /**
   * A builder's result. The step's new state is applied at once, so that a
   * build loaded while the result is being written sees it (a finished step
   * makes it cached, a failed one a cached failure); the database write
   * follows, and only after it commits are dependents released.
   */
  private outcome(aj: ActiveJob, outcome: StepOutcome): void {
    const { step, machine } = aj;
    if (this.active.get(step) !== aj) return; // aborted or already reported
    this.active.delete(step);
    if (this.debug) this.o.log.debug({ build: aj.buildId, drv: step.drvPath, machine: machine.id, outcome: outcome.kind }, 'step result');
    if (outcome.kind === 'transient') {
      this.o.log.warn({ build: aj.buildId, drv: step.drvPath, machine: machine.id, err: outcome.errorMsg }, 'step failed transiently');
      this.counters.stepsTransient++;
      if (outcome.machineFault) {
        this.dispatcher.machineFailed(machine);
        this.statsOf(machine.id).machineFailures++;
      }
      const next = this.dispatcher.jobEnded(step, machine, 'transient');
      if (next === 'retrying') this.counters.stepsRetried++;
      this.track(this.persistTransient(aj, outcome.errorMsg, next === 'abandoned'));
      return;
    }
    if (step.state === 'dispatched') this.graph.transition(step, 'START');
    this.recordMachineStep(machine.id, aj.startedAt, outcome);
    this.dispatcher.jobEnded(step, machine, 'done');
    this.dispatcher.machineSucceeded(machine);
    this.charge(step, outcome.stopTime - outcome.startTime);
    this.counters.stepsFinished++;
    if (outcome.kind === 'success') {
      this.graph.transition(step, outcome.nixSupport.failed ? 'FAIL_WITH_OUTPUT' : 'SUCCEED');
      this.track(this.persistSuccess(aj, outcome, step.builds.filter((b) => !b.done)));
    } else {
      this.graph.transition(step, 'FAIL');
      this.track(
        this.persistFailure(step, { buildId: aj.buildId, row: aj.row }, {
          status: outcome.status,
          errorMsg: outcome.errorMsg,
          machine: machine.id,
          startTime: outcome.startTime,
          stopTime: outcome.stopTime,
          logFile: outcome.logFile,
          cacheable: outcome.status === BuildStatus.Failed,
        }),
      );
    }
  }

  private async persistSuccess(aj: ActiveJob, outcome: Extract<StepOutcome, { kind: 'success' }>, builds: BuildRecord[]): Promise<void> {
    const { step } = aj;
    const stepnr = await aj.row;
    const ended = await this.closing(aj.buildId, stepnr, () =>
      this.o.db.stepSucceeded({
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
        failedWithOutput: outcome.nixSupport.failed,
        releaseName: outcome.nixSupport.releaseName,
        products: outcome.nixSupport.products,
        metrics: outcome.nixSupport.metrics,
        builds: builds.map((b) => ({ id: b.id, isCachedBuild: b.id !== aj.buildId })),
      }),
    );
    for (const id of ended) this.buildEnded(id, !outcome.nixSupport.failed, false);
    for (const b of this.graph.completeSuccess(step)) this.graph.removeBuild(b);
  }

  private async persistTransient(aj: ActiveJob, errorMsg: string, abandoned: boolean): Promise<void> {
    const stepnr = await aj.row;
    if (abandoned) {
      // Retries used up: this attempt's row carries the final status 3.
      await this.persistFailure(aj.step, { buildId: aj.buildId, row: Promise.resolve(stepnr) }, {
        status: BuildStatus.Aborted,
        errorMsg,
        machine: aj.machine.id,
        startTime: unixNow(aj.startedAt),
        stopTime: unixNow(this.clock.now()),
        logFile: '',
        cacheable: false,
      });
    } else if (stepnr !== null) {
      await this.closing(aj.buildId, stepnr, () =>
        this.o.db.stepAborted({ buildId: aj.buildId, stepnr, status: 3, errorMsg, stopTime: unixNow(this.clock.now()), machine: aj.machine.id }),
      );
    }
  }

  /** A step that will never build (unsupported) fails every build that needs it. */
  private failUnsupported(step: StepRecord): void {
    this.graph.transition(step, 'UNSUPPORTED');
    this.counters.stepsUnsupported++;
    const build = this.buildFor(step)?.id;
    if (build === undefined) return;
    const now = unixNow(this.clock.now());
    this.track(
      this.persistFailure(step, { buildId: build, row: Promise.resolve(null) }, {
        status: BuildStatus.Unsupported,
        errorMsg: 'unsupported system type',
        machine: '',
        startTime: now,
        stopTime: now,
        logFile: '',
        cacheable: false,
      }),
    );
  }

  /**
   * Writes a permanent failure: the step's row (updated, or inserted when it
   * never got one) and every build that needs the step. Builds that attached
   * to a dependent of the step while that write was in flight are failed in
   * a follow-up write, so none is left waiting on a failed step.
   */
  private async persistFailure(
    step: StepRecord,
    at: { buildId: number; row: Promise<number | null> },
    f: { status: number; errorMsg: string; machine: string; startTime: number; stopTime: number; logFile: string; cacheable: boolean },
  ): Promise<void> {
    const handled = new Set(this.graph.dependentBuilds(step));
    const stepnr = await at.row;
    const ended = await this.closing(at.buildId, stepnr, () =>
      this.o.db.stepFailed({
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
        builds: [...handled].map((b) => ({ id: b.id, own: b.toplevel === step })),
        cacheablePaths: f.cacheable ? step.outputs.flatMap((o) => (o.path ? [o.path] : [])) : [],
      }),
    );
    for (;;) {
      const late = this.graph.dependentBuilds(step).filter((b) => !handled.has(b));
      if (late.length === 0) break;
      for (const b of late) handled.add(b);
      ended.push(
        ...(await this.persist(() =>
          this.o.db.dependentsFailed({
            failedBuildId: at.buildId,
            drvPath: step.drvPath,
            system: step.platform.system,
            status: f.status,
            stopTime: f.stopTime,
            builds: late.map((b) => ({ id: b.id, own: b.toplevel === step })),
          }),
        )),
      );
    }
    for (const id of ended) this.buildEnded(id, false, false);
    for (const b of handled) this.graph.removeBuild(b);
  }

  /**
   * Retries a result write while the database is unreachable: the result is
   * real (outputs are in the store) and must not be lost. Other errors are
   * retried a few times, then given up (a restart recomputes from the store).
   */
  private async persist<T>(write: () => Promise<T>): Promise<T> {
    const max = this.o.maxPendingWrites ?? Infinity;
    if (++this.writes >= max) this.holdDispatch('backpressure');
    try {
      for (let attempt = 1; ; attempt++) {
        await this.gateOpen();
        try {
          return await write();
        } catch (err) {
          const lost = isConnectionError(err);
          if (this.stopping || (!lost && attempt >= 3)) throw err;
          // Short: while the database is away the gate holds writes back, not this delay.
          const delay = Math.min(5_000, 100 * 2 ** attempt);
          this.o.log.warn({ err: String((err as Error)?.message ?? err), attempt, delayMs: delay }, 'result write failed; retrying');
          await new Promise((r) => setTimeout(r, delay));
        }
      }
    } finally {
      if (--this.writes < max) this.releaseDispatch('backpressure');
    }
  }

  /** A write that ends an attempt's row: the row stops being live once it is done (or given up). */
  private async closing<T>(buildId: number, stepnr: number | null, write: () => Promise<T>): Promise<T> {
    try {
      return await this.persist(write);
    } finally {
      if (stepnr !== null) this.liveRows.delete(`${buildId}:${stepnr}`);
    }
  }

  /** Waits for the write gate; a drain that begins meanwhile gives the write up. */
  private async gateOpen(): Promise<void> {
    const gate = this.o.gate;
    if (!gate) return;
    let open = false;
    const opened = gate.whenOpen().then(() => {
      open = true;
    });
    opened.catch(() => {});
    await Promise.race([opened, this.stopWait]);
    if (!open) throw new Error('runner stopping while the database is unreachable; write dropped');
  }

  /**
   * Stopping begins: writes waiting for the gate give up now. Before the
   * queue monitor is stopped, whose pass may be waiting on such a write.
   */
  abandonWaitingWrites(): void {
    this.stopped();
  }

  /** Result writes waiting for the database or in flight. */
  get pendingWrites(): number {
    return this.writes;
  }

  /** Pauses dispatch for `reason` (several may hold it) until releaseDispatch(reason). */
  holdDispatch(reason: string): void {
    if (this.holds.has(reason)) return;
    this.holds.add(reason);
    this.dispatcher.pause();
    this.o.log.info({ reason }, 'dispatch paused');
  }

  releaseDispatch(reason: string): void {
    if (!this.holds.delete(reason)) return;
    this.o.log.info({ reason, stillHeld: [...this.holds] }, 'dispatch hold released');
    if (this.holds.size === 0 && !this.stopping) this.dispatcher.resume();
  }

  /**
   * After the database came back (lock re-taken): once the start rows being
   * written have landed, busy rows that are none of this runner's live
   * attempts are aborted — e.g. a start whose commit went through but whose
   * reply was lost, then written again. Returns how many.
   */
  async reconcile(): Promise<number> {
    await Promise.all([...this.active.values()].map((aj) => aj.row));
    return this.persist(() => this.o.db.abortOrphans(unixNow(this.clock.now()), [...this.liveRows.values()]));
  }

  private track(p: Promise<unknown>): void {
    const t = p.catch((err: unknown) => this.o.log.error({ err: String((err as Error)?.stack ?? err) }, 'scheduler write failed'));
    this.inflight.add(t);
    void t.finally(() => this.inflight.delete(t));
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
              : this.closing(aj.buildId, nr, () =>
                  this.o.db.stepAborted({ buildId: aj.buildId, stepnr: nr, status: 4, errorMsg: 'no build needs this step any more', stopTime: unixNow(this.clock.now()), machine: aj.machine.id }),
                ),
          ),
        );
      }
    } else if (previous !== 'runnable' || step.runnableSince !== 0) {
      // (A runnable step not yet announced was never queued.)
      this.dispatcher.forget(step, previous);
    }
  }

  private recordMachineStep(machine: string, startedAt: number, outcome: Exclude<StepOutcome, { kind: 'transient' }>): void {
    const m = this.statsOf(machine);
    const now = this.clock.now();
    m.stepsDone++;
    if (outcome.kind === 'success') {
      m.succeeded++;
      this.counters.stepsSucceeded++;
    } else {
      m.failed++;
      this.counters.stepsFailed++;
    }
    m.totalStepMs += now - startedAt;
    m.totalBuildMs += Math.max(0, outcome.stopTime - outcome.startTime) * 1000;
    m.lastStepAt = now;
  }

  private statsOf(machine: string): MachineStats {
    let m = this.machineStats.get(machine);
    if (!m) this.machineStats.set(machine, (m = { stepsDone: 0, succeeded: 0, failed: 0, totalStepMs: 0, totalBuildMs: 0, lastStepAt: 0, machineFailures: 0 }));
    return m;
  }

  /** The steps running now (bounded by the machines' slots). */
  *running(): IterableIterator<RunningStep> {
    for (const aj of this.active.values()) {
      yield { jobId: aj.job.jobId, step: aj.step, machine: aj.machine.id, buildId: aj.buildId, startedAt: aj.startedAt, busy: aj.busy };
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
    this.stopping = true;
    this.stopped();
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
