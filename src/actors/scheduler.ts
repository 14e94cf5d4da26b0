import { StepBusy, type StepBusyCode } from '../db/status.ts';
import type { JobsetRow } from '../db/scheduler-db-interface.ts';
import type { StepState } from '../machines/index.ts';
import type { BuilderPort, StepOutcome } from './builder-port.ts';
import { finishingPort } from './finishing-port.ts';
import { Dispatcher } from './dispatcher.ts';
import { MachineActor } from './machine-actor.ts';
import type { MachineRecord } from './machine-record.ts';
import { systemClock, type Clock, type JobsetRecord, type StepRecord } from './model.ts';
import { StepGraph, type AddBuildResult, type QueuedBuild } from './step-graph.ts';
import { ActiveJobs, type ActiveJob, type RunningStep } from './active-jobs.ts';
import { ResultWriter } from './result-writer.ts';
import { StepResults, failedPathsCache } from './step-results.ts';
import { SchedulerStats, type MachineStats, type SchedulerCounters } from './scheduler-stats.ts';
import { PrepareStep, type ResolvedStepPrepared } from './prepare-step.ts';
import { ResolvedSteps } from './resolved-steps.ts';
import { DispatchHolds } from './dispatch-holds.ts';
import type { SchedulerIntake } from './scheduler-intake.ts';
import { retriesAfterFirstAttempt, type SchedulerConfig, type SchedulerOptions } from './scheduler-options.ts';

export type { SchedulerConfig, SchedulerOptions } from './scheduler-options.ts';
export type { WriteGate } from './result-writer.ts';

/**
 * Composes the step graph, the dispatcher, the builders and the database. A
 * step's way: runnable in the graph → PrepareStep → Dispatcher → its start
 * row (StepResults, ResultWriter) and the job on the machine's port
 * (ActiveJobs) → stepResult → StepResults: in the graph at once, written in
 * one transaction, dependents released after the commit. A crash at any
 * point leaves the database in a state from which a restart reaches the
 * same outcome.
 *
 * Public: the queue monitor's intake (SchedulerIntake), machines joining and
 * leaving, dispatch holds, the lifecycle (reconcile, drain), and views for
 * status and metrics (`graph` and `dispatcher` stay readable for those).
 */
export class Scheduler implements SchedulerIntake {
  readonly graph: StepGraph;
  readonly dispatcher: Dispatcher;
  private readonly ports = new Map<string, BuilderPort>();
  private readonly active = new ActiveJobs();
  private readonly stats = new SchedulerStats();
  private readonly writer: ResultWriter<ActiveJob>;
  private readonly results: StepResults;
  private readonly resolutions: ResolvedSteps;
  private readonly prepare: PrepareStep;
  private readonly holds: DispatchHolds;
  private readonly clock: Clock;
  /** Per-step debug lines cost allocations on the dispatch path; build them only when wanted. */
  private readonly debug: boolean;
  readonly counters: SchedulerCounters = this.stats.counters;
  readonly machineStats: ReadonlyMap<string, MachineStats> = this.stats.machineStats;
  readonly jobsets: ReadonlyMap<number, JobsetRecord> = this.stats.jobsets;
  /** Listeners for finished builds (tests, status, visualizer). */
  onBuildFinished: ((buildId: number) => void) | null = null;

  constructor(private readonly o: SchedulerOptions) {
    const clock = (this.clock = o.clock ?? systemClock);
    this.debug = o.log.isLevelEnabled('debug');
    this.writer = new ResultWriter<ActiveJob>({
      db: o.db, log: o.log, clock, gate: o.gate, maxPendingWrites: o.maxPendingWrites,
      backpressure: (on) => (on ? this.holdDispatch('backpressure') : this.releaseDispatch('backpressure')),
      running: (aj) => this.active.isRunning(aj),
    });
    this.prepare = new PrepareStep({ preparer: o.preparer, enqueue: (s) => this.dispatcher.enqueue(s), apply: (s, r) => (r.kind === 'built' ? this.resolutions.alreadyBuilt(s, r.outputs) : r.kind === 'substituted' ? this.resolutions.substituted(s, r) : this.resolved(s, r)), log: o.log });
    this.graph = new StepGraph({
      store: o.store,
      failures: failedPathsCache(o.db),
      clock,
      trackCriticalPath: o.config.stepSortFn === 'WithCriticalPath',
      listener: {
        runnable: (s) => this.prepare.runnable(s),
        reprioritized: (s) => this.prepare.has(s) || this.dispatcher.reprioritize(s),
        released: (s, prev) => this.released(s, prev),
      },
    });
    this.results = new StepResults({ db: o.db, graph: this.graph, writer: this.writer, stats: this.stats, log: o.log, clock, finisher: o.finisher, buildFinished: (id) => this.onBuildFinished?.(id) });
    this.resolutions = new ResolvedSteps({ db: o.db, graph: this.graph, writer: this.writer, stats: this.stats, log: o.log, clock, finisher: o.finisher, buildFinished: (id) => this.onBuildFinished?.(id) });
    const { stepSortFn, machineSortFn, machineFreeFn, maxRetries, retryInterval, retryBackoff, maxUnsupportedTimeInS, dispatchTriggerTimerInS } = o.config;
    this.dispatcher = new Dispatcher({
      clock, stepSortFn, machineSortFn, machineFreeFn, maxRetries: retriesAfterFirstAttempt(maxRetries), retryInterval, retryBackoff, maxUnsupportedTimeInS, dispatchTriggerTimerInS,
      stepEvent: (s, e) => this.graph.transition(s, e),
      assign: (s, m, now) => this.assign(s, m, now),
      unsupported: (s) => this.results.unsupported(s),
      onDispatch: o.onDispatch,
    });
    this.holds = new DispatchHolds({ pause: () => this.dispatcher.pause(), resume: () => this.dispatcher.resume(), log: o.log });
  }

  /** Applies a reloaded configuration: retry, capacity and limit settings at once; returns the keys that need a restart. */
  reconfigure(c: SchedulerConfig): string[] {
    const old = this.o.config;
    const { maxRetries, retryInterval, retryBackoff, maxUnsupportedTimeInS, machineFreeFn } = c;
    this.dispatcher.reconfigure({ maxRetries: retriesAfterFirstAttempt(maxRetries), retryInterval, retryBackoff, maxUnsupportedTimeInS, machineFreeFn });
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

  /** A machine by id (joined and not yet removed), for the services that own machines. */
  machine(id: string): MachineActor | undefined {
    return this.dispatcher.machines.get(id);
  }

  /** A builder is done with a job whose outputs are still being published: its slot is free. */
  private builtOn(m: MachineRecord, jobId: string): void {
    const aj = this.active.ofJob(jobId);
    if (aj?.machine === m) this.dispatcher.releaseSlot(aj.step, m);
  }

  /** The machine is gone: its jobs are retried elsewhere (transient, machine at fault). */
  removeMachine(id: string, event: 'GRACE_EXPIRED' | 'REMOVE' | 'DRAINED' | 'DISCONNECTED' = 'REMOVE'): void {
    const m = this.dispatcher.machines.get(id);
    if (!m) return;
    for (const step of [...m.jobs]) {
      const aj = this.active.ofStep(step);
      if (aj) this.stepResult(aj, { kind: 'transient', errorMsg: `machine ${id} lost`, machineFault: true });
    }
    this.dispatcher.removeMachine(m, event);
    this.ports.delete(id);
  }

  // ------------------------------------------------------------ intake (the queue monitor)

  hasBuild(id: number): boolean {
    return this.graph.builds.has(id);
  }

  buildIds(): number[] {
    return [...this.graph.builds.keys()];
  }

  jobsetRecord(row: { jobsetId: number; project: string; jobset: string }, shares = 100): JobsetRecord {
    return this.stats.jobset(row, shares);
  }

  jobsetShares(row: JobsetRow): void {
    this.stats.jobsetShares(row);
  }

  async addBuild(q: QueuedBuild): Promise<AddBuildResult['kind']> {
    this.counters.buildsLoaded++;
    const r = await this.graph.addBuild(q);
    await this.results.loaded(q, r);
    return r.kind;
  }

  dropBuild(id: number): void {
    const b = this.graph.builds.get(id);
    if (b) this.graph.removeBuild(b);
  }

  bump(id: number, globalPriority: number): void {
    const b = this.graph.builds.get(id);
    if (b && b.globalPriority !== globalPriority) this.graph.bump(b, globalPriority);
  }

  // ------------------------------------------------------------ a step's way

  private assign(step: StepRecord, m: MachineRecord, now: number): void {
    const port = this.ports.get(m.id)!;
    // The job is handed over first; its row is written right after the round.
    const buildId = this.results.rowBuildId(step);
    const row = this.results.started(step, buildId, m.id, now);
    const aj = this.active.start(step, m, port, buildId, row, this.o.config, now);
    this.counters.stepsStarted++;
    if (this.debug) this.o.log.debug({ build: buildId, drv: step.drvPath, machine: m.id, job: aj.job.jobId }, 'step dispatched');
    port.start(aj.job, (outcome) => this.stepResult(aj, outcome), (busy) => this.progress(aj, busy));
  }

  private progress(aj: ActiveJob, busy: StepBusyCode): void {
    if (!this.active.isRunning(aj)) return;
    aj.busy = busy;
    if (busy === StepBusy.Building && aj.step.state === 'dispatched') this.graph.transition(aj.step, 'START');
    this.writer.busyChanged(aj);
  }

  /**
   * An attempt's result, from its builder (or a lost machine, or the drain):
   * the dispatcher frees the slot (and retries a transient failure), then
   * StepResults applies it to the graph and writes it.
   */
  private stepResult(aj: ActiveJob, outcome: StepOutcome): void {
    const { step, machine } = aj;
    if (!this.active.end(aj)) return; // aborted or already reported
    if (this.debug) this.o.log.debug({ build: aj.buildId, drv: step.drvPath, machine: machine.id, outcome: outcome.kind }, 'step result');
    if (outcome.kind === 'transient') {
      if (outcome.machineFault) this.dispatcher.machineFailed(machine);
      return this.results.transient(aj, outcome, this.dispatcher.jobEnded(step, machine, 'transient'));
    }
    if (step.state === 'dispatched') this.graph.transition(step, 'START');
    this.dispatcher.jobEnded(step, machine, 'done');
    this.dispatcher.machineSucceeded(machine);
    this.results.finished(aj, outcome);
  }

  /**
   * A step resolved to another derivation: its status-13 row is written
   * first (a crash after it resolves again to the same row), then the graph
   * builds the resolved derivation in its place, or completes the original
   * with the resolved derivation's outputs when they exist.
   */
  private async resolved(step: StepRecord, r: ResolvedStepPrepared): Promise<void> {
    if (!(await this.resolutions.resolved(step, r))) return;
    if (r.failedBefore) return this.resolutions.failedBefore(step, r);
    const res = r.built ? { kind: 'built' as const } : await this.graph.resolveTo(step, r.drvPath);
    if (res.kind === 'failed') return this.results.failedAs(step, res.step);
    if (res.kind === 'built' && step.state === 'runnable') await this.resolutions.resolvedBuilt(step, r);
    if (res.kind === 'step' && this.debug) this.o.log.debug({ drv: step.drvPath, resolved: r.drvPath }, 'step resolved');
  }

  private released(step: StepRecord, previous: StepState): void {
    this.o.preparer?.released?.(step);
    if (previous === 'dispatched' || previous === 'building') {
      const aj = this.active.ofStep(step);
      if (aj && this.active.end(aj)) {
        aj.port.abort(aj.job.jobId);
        this.dispatcher.jobEnded(step, aj.machine, 'done');
        this.results.noLongerNeeded(aj);
      }
    } else if (!this.prepare.forget(step) && (previous !== 'runnable' || step.runnableSince !== 0)) {
      // (A runnable step not yet announced was never queued; one being prepared is not queued yet.)
      this.dispatcher.forget(step, previous);
    }
  }

  // ------------------------------------------------------------ dispatch holds and lifecycle

  /** Pauses dispatch for `reason` (several may hold it) until releaseDispatch(reason). */
  holdDispatch(reason: string): void {
    this.holds.hold(reason);
  }

  releaseDispatch(reason: string): void {
    this.holds.release(reason);
  }

  /**
   * After the database came back (lock re-taken): busy rows that are none of
   * this runner's live attempts are aborted — e.g. a start whose commit went
   * through but whose reply was lost, then written again. Returns how many.
   */
  reconcile(): Promise<number> {
    return this.writer.abortOrphans(this.active.list().map((aj) => aj.row));
  }

  /** Stopping begins: writes waiting for the gate give up now (before the queue monitor stops: its pass may wait on one). */
  abandonWaitingWrites(): void {
    this.writer.abandonWaiting();
  }

  /** Result writes waiting for the database or in flight. */
  get pendingWrites(): number {
    return this.writer.pending;
  }

  /** Write backpressure: held now, how often dispatch was held, the most writes pending at once. */
  get writePressure(): { held: boolean; holds: number; maxPending: number } {
    return { held: this.writer.backpressured, ...this.writer.pressure };
  }

  get activeJobs(): number {
    return this.active.size;
  }

  /** The steps running now (bounded by the machines' slots). */
  running(): IterableIterator<RunningStep> {
    return this.active.running();
  }

  /** Resolves when every pending database write has settled. */
  settle(): Promise<void> {
    return this.writer.settle();
  }

  /** Drain: no new dispatch; wait up to `graceMs` for running steps, then abort the rest, writing their rows as aborted. */
  async drain(graceMs: number): Promise<void> {
    this.holds.stop();
    this.writer.stop();
    this.prepare.close();
    const deadline = this.clock.now() + graceMs;
    while (this.active.size > 0 && this.clock.now() < deadline) await new Promise((r) => setTimeout(r, 50));
    for (const aj of this.active.list()) {
      aj.port.abort(aj.job.jobId);
      this.stepResult(aj, { kind: 'transient', errorMsg: 'runner stopping', machineFault: false });
    }
    await this.settle();
    this.dispatcher.close();
  }
}
