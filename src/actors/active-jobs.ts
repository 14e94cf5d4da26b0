import { StepBusy, type StepBusyCode } from '../db/status.ts';
import type { BuilderPort, StepJob } from './builder-port.ts';
import type { MachineRecord } from './machine-record.ts';
import type { StepRecord } from './model.ts';
import type { AttemptRow } from './result-writer.ts';

/** One attempt of a step on a machine, from hand-over to its result (or abort). */
export interface ActiveJob extends AttemptRow {
  readonly job: StepJob;
  readonly step: StepRecord;
  readonly machine: MachineRecord;
  readonly port: BuilderPort;
  readonly startedAt: number;
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

/** The limits a job carries: the step's own, else the runner's. */
export interface JobLimits {
  maxLogSize: number;
  maxOutputSize: number;
  maxSilentTime: number;
  buildTimeout: number;
}

/**
 * The attempts running now, by step and by job id (bounded by the machines'
 * slots). An attempt leaves the table exactly once, by `end`: whatever ends
 * it first (its result, a lost machine, a cancel, the drain) wins, and later
 * reports of the same attempt are ignored.
 */
export class ActiveJobs {
  private readonly bySteps = new Map<StepRecord, ActiveJob>();
  private readonly byJobs = new Map<string, ActiveJob>();
  private seq = 0;

  /** Registers a new attempt of `step` on `m`; its job id is unique per attempt. */
  start(step: StepRecord, m: MachineRecord, port: BuilderPort, buildId: number, row: Promise<number | null>, limits: JobLimits, now: number): ActiveJob {
    const job: StepJob = {
      jobId: `${step.id}.${++this.seq}`,
      drvPath: step.drvPath,
      outputs: step.outputs,
      maxSilentTime: step.maxSilent || limits.maxSilentTime,
      buildTimeout: step.timeout || limits.buildTimeout,
      maxLogSize: limits.maxLogSize,
      maxOutputSize: limits.maxOutputSize,
    };
    const aj: ActiveJob = { job, step, machine: m, port, buildId, row, startedAt: now, busy: StepBusy.Preparing, busyWritten: StepBusy.Preparing, busyWriteScheduled: false };
    this.bySteps.set(step, aj);
    this.byJobs.set(job.jobId, aj);
    return aj;
  }

  /** Removes the attempt; false if it had already ended (reported, aborted, or its machine lost). */
  end(aj: ActiveJob): boolean {
    if (this.bySteps.get(aj.step) !== aj) return false;
    this.bySteps.delete(aj.step);
    this.byJobs.delete(aj.job.jobId);
    return true;
  }

  isRunning(aj: ActiveJob): boolean {
    return this.bySteps.get(aj.step) === aj;
  }

  ofStep(step: StepRecord): ActiveJob | undefined {
    return this.bySteps.get(step);
  }

  ofJob(jobId: string): ActiveJob | undefined {
    return this.byJobs.get(jobId);
  }

  get size(): number {
    return this.bySteps.size;
  }

  /** A copy: ending attempts while iterating it is safe. */
  list(): ActiveJob[] {
    return [...this.bySteps.values()];
  }

  *running(): IterableIterator<RunningStep> {
    for (const aj of this.bySteps.values()) {
      yield { jobId: aj.job.jobId, step: aj.step, machine: aj.machine.id, buildId: aj.buildId, startedAt: aj.startedAt, busy: aj.busy };
    }
  }
}
