import type { JobsetRow } from '../db/scheduler-db-interface.ts';
import type { StepOutcome } from './builder-port.ts';
import type { JobsetRecord, StepRecord } from './model.ts';

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
  /** The most attempts a step had made when it was scheduled for another (Rust runner `max_nr_retries`). */
  maxTries: number;
  /** Times the queue monitor woke up: a notification, a LISTEN reconnect or the poll timer (Hydra's `nrQueueWakeups`). */
  queueWakeups: number;
}

/** How far back build time counts against a jobset's share (Hydra: 24 h). */
export const FAIR_SHARE_WINDOW_S = 24 * 3600;

/**
 * The scheduler's totals (read by the status API and metrics at scrape
 * time), per-machine statistics, and fair share: the jobsets with their
 * scheduling shares and the build seconds charged to them in the window,
 * which the dispatcher compares across jobsets.
 */
export class SchedulerStats {
  readonly counters: SchedulerCounters = {
    buildsLoaded: 0, buildsFinished: 0, buildsSucceeded: 0, buildsFailed: 0, buildsCached: 0,
    stepsStarted: 0, stepsFinished: 0, stepsRetried: 0, stepsUnsupported: 0, stepsSucceeded: 0, stepsFailed: 0, stepsTransient: 0,
    maxTries: 0, queueWakeups: 0,
  };
  readonly machineStats = new Map<string, MachineStats>();
  readonly jobsets = new Map<number, JobsetRecord>();

  machine(id: string): MachineStats {
    let m = this.machineStats.get(id);
    if (!m) this.machineStats.set(id, (m = { stepsDone: 0, succeeded: 0, failed: 0, totalStepMs: 0, totalBuildMs: 0, lastStepAt: 0, machineFailures: 0 }));
    return m;
  }

  /** A step ended for good on `machine` (dispatched at `startedAt`): counted, and its build time charged. */
  stepDone(step: StepRecord, machine: string, startedAt: number, outcome: Exclude<StepOutcome, { kind: 'transient' }>, now: number): void {
    const m = this.machine(machine);
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
    this.charge(step, outcome.stopTime - outcome.startTime, now);
    this.counters.stepsFinished++;
  }

  /** A step is scheduled for another attempt after `step.tries` attempts. */
  retried(step: StepRecord): void {
    this.counters.stepsRetried++;
    this.counters.maxTries = Math.max(this.counters.maxTries, step.tries);
  }

  buildEnded(succeeded: boolean, cached: boolean): void {
    this.counters.buildsFinished++;
    if (cached) this.counters.buildsCached++;
    if (succeeded) this.counters.buildsSucceeded++;
    else this.counters.buildsFailed++;
  }

  /** The jobset's record, made on first sight with `shares`. */
  jobset(row: { jobsetId: number; project: string; jobset: string }, shares = 100): JobsetRecord {
    let j = this.jobsets.get(row.jobsetId);
    if (!j) this.jobsets.set(row.jobsetId, (j = { id: row.jobsetId, project: row.project, name: row.jobset, shares, seconds: 0, charges: [] }));
    return j;
  }

  /**
   * Shares as the database has them. Seconds used in the window are taken
   * from the database only until this runner charges the jobset itself.
   */
  jobsetShares(row: JobsetRow): void {
    const j = this.jobset({ jobsetId: row.id, project: row.project, jobset: row.name });
    j.shares = row.schedulingShares;
    if (j.charges.length === 0) j.seconds = row.recentSeconds;
  }

  /**
   * Fair share: a finished step's build time is divided among the jobsets
   * that need it, in whole seconds (C++ builder.cc:236-245 at cf9f38e4,
   * `(stopTime - startTime) / step_->jobsets.size()` in time_t), so a step
   * shared by n jobsets costs each 1/n of it.
   */
  private charge(step: StepRecord, seconds: number, now: number): void {
    if (seconds <= 0 || step.jobsets.length === 0) return;
    const share = Math.floor(seconds / step.jobsets.length);
    if (share <= 0) return;
    for (const j of step.jobsets) {
      j.seconds += share;
      j.charges.push({ at: now, seconds: share });
      while (j.charges.length > 0 && j.charges[0]!.at < now - FAIR_SHARE_WINDOW_S * 1000) j.seconds -= j.charges.shift()!.seconds;
    }
  }
}
