import { StepBusy, type StepBusyCode } from '../db/status.ts';
import type { BuilderPort, StepJob } from './builder-port.ts';
import type { MachineRecord } from './machine-record.ts';
import type { StepRecord } from './model.ts';
import { determinismOf } from './determinism.ts';
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

/**
 * A step's silence and time limits: the largest of the builds that need it
 * (StepRecord.maxSilent/timeout), else the runner's defaults. A step that is
 * only a dependency (no build's own derivation) gets at least the defaults:
 * a build's meta.timeout is about its own derivation, and a test with a
 * 3-minute timeout must not cut building its closure short. As Hydra's Rust
 * runner (state/mod.rs:851-873); the C++ runner takes the maximum over the
 * builds without that floor.
 */
export function stepTimeLimits(step: StepRecord, defaults: Pick<JobLimits, 'maxSilentTime' | 'buildTimeout'>): { maxSilentTime: number; buildTimeout: number } {
  const maxSilentTime = step.maxSilent || defaults.maxSilentTime;
  const buildTimeout = step.timeout || defaults.buildTimeout;
  if (step.builds.length > 0) return { maxSilentTime, buildTimeout };
  return { maxSilentTime: Math.max(maxSilentTime, defaults.maxSilentTime), buildTimeout: Math.max(buildTimeout, defaults.buildTimeout) };
}

/** The limits a job carries: the step's own, else the runner's. */
export interface JobLimits {
  maxLogSize: number;
  maxOutputSize: number;
  /** Hydra's jobset repeats, `project:jobset:N` (src/actors/determinism.ts). */
  jobsetRepeats?: readonly string[];
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
    // One literal of a fixed shape, no spreads: this runs once per assignment, inside the dispatch round.
    const { maxSilentTime, buildTimeout } = stepTimeLimits(step, limits);
    let job: StepJob = {
      jobId: `${step.id}.${++this.seq}`,
      drvPath: step.drvPath,
      outputs: step.outputs,
      maxSilentTime,
      buildTimeout,
      maxLogSize: limits.maxLogSize,
      // 0 sets no limit (upstream's default): every builder compares sizes against a number.
      maxOutputSize: limits.maxOutputSize > 0 ? limits.maxOutputSize : Number.MAX_SAFE_INTEGER,
    };
    const d = determinismOf(step, limits.jobsetRepeats);
    if (d.repeats > 0) job = { ...job, ...d }; // rare: the common shape stays fixed
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
