import { EventEmitter } from 'node:events';
import type pg from 'pg';
import { transition, initialTransition, type SnapshotFrom } from 'xstate';
import type { BuilderPort, StepFinisher, StepJob } from '../../src/actors/builder-port.ts';
import { DEFAULT_THRESHOLDS, IDLE_LOAD, type MachineRecord } from '../../src/actors/machine-record.ts';
import type { SchedulerStore, StepRecord } from '../../src/actors/model.ts';
import type { SchedulerConfig } from '../../src/actors/scheduler.ts';
import type { StepPreparer } from '../../src/actors/prepare-step.ts';
import { startRunnerRuntime, type RunnerRuntime } from '../../src/daemon/runner-runtime.ts';
import { PgSchedulerDb } from '../../src/db/scheduler-db.ts';
import { stepMachine, type StepEventType } from '../../src/machines/index.ts';
import { createLogger } from '../../src/util/logger.ts';

export const TEST_CONFIG: SchedulerConfig & { queueTriggerTimerInS: number } = {
  stepSortFn: 'Legacy',
  machineSortFn: 'SpeedFactorOnly',
  machineFreeFn: 'Static',
  maxRetries: 2,
  retryInterval: 0.01,
  retryBackoff: 1.5,
  maxUnsupportedTimeInS: 0.1,
  maxLogSize: 64 * 1024 * 1024,
  maxOutputSize: 2 ** 31,
  maxSilentTime: 3600,
  buildTimeout: 36000,
  queueTriggerTimerInS: -1,
};

export const quietLog = createLogger({ level: process.env.HYDRANT_TEST_LOG ?? 'silent' });

export function machineRecord(id: string, over: Partial<MachineRecord> = {}): MachineRecord {
  return {
    id, systems: new Set(['x86_64-linux']), features: new Set(), mandatoryFeatures: new Set(), maxJobs: 2, speedFactor: 1,
    cpuCount: 1, bogomips: 1, state: 'joining', jobs: new Set(), consecutiveFailures: 0, lastFailure: 0, disabledUntil: 0,
    idleSince: 0, roomSince: 0, load: { ...IDLE_LOAD }, thresholds: DEFAULT_THRESHOLDS, ...over,
  };
}

/** Starts the scheduler and queue monitor on `pool`; `listener` stands in for the LISTEN connection. */
export async function startRuntime(
  pool: pg.Pool,
  store: SchedulerStore,
  config: Partial<typeof TEST_CONFIG> = {},
  finisher?: StepFinisher,
  preparer?: StepPreparer,
): Promise<{ runtime: RunnerRuntime; listener: EventEmitter }> {
  const listener = new EventEmitter();
  const runtime = await startRunnerRuntime({ config: { ...TEST_CONFIG, ...config }, db: new PgSchedulerDb(pool), store, listener, log: quietLog, finisher, preparer });
  return { runtime, listener };
}

/**
 * Wraps a builder port to check that no derivation is built by two
 * machines at once (aborts end a job too).
 */
export class ExclusiveCheck {
  readonly running = new Map<string, string>();
  readonly violations: string[] = [];

  wrap(machine: string, port: BuilderPort): BuilderPort {
    const jobs = new Map<string, StepJob>();
    return {
      start: (job, report, progress) => {
        const other = this.running.get(job.drvPath);
        if (other !== undefined) this.violations.push(`${job.drvPath} on ${machine} while on ${other}`);
        this.running.set(job.drvPath, machine);
        jobs.set(job.jobId, job);
        port.start(job, (o) => {
          if (jobs.delete(job.jobId)) this.running.delete(job.drvPath);
          report(o);
        }, progress);
      },
      abort: (jobId) => {
        const job = jobs.get(jobId);
        if (job && jobs.delete(jobId)) this.running.delete(job.drvPath);
        port.abort(jobId);
      },
    };
  }
}

/**
 * Shadows every step transition the runtime makes with XState's own pure
 * `transition()` on the step machine, recording any disagreement.
 */
export function shadowTransitions(runtime: RunnerRuntime): string[] {
  const disagreements: string[] = [];
  const graph = runtime.scheduler.graph;
  const snapshots = new WeakMap<StepRecord, SnapshotFrom<typeof stepMachine>>();
  const original = graph.transition.bind(graph);
  graph.transition = (step: StepRecord, event: StepEventType) => {
    const snap = snapshots.get(step) ?? initialTransition(stepMachine)[0];
    if (snap.value !== step.state) disagreements.push(`${step.drvPath}: XState at ${String(snap.value)}, runtime at ${step.state}`);
    const next = original(step, event);
    const [after] = transition(stepMachine, snap, { type: event });
    if (after.value !== next) disagreements.push(`${step.drvPath}: ${event} → XState ${String(after.value)}, runtime ${next}`);
    snapshots.set(step, after);
    return next;
  };
  return disagreements;
}

export async function waitFor(cond: () => boolean | Promise<boolean>, ms = 10_000, what = 'condition'): Promise<void> {
  const deadline = Date.now() + ms;
  while (!(await cond())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 10));
  }
}

/** Awaits `p`, failing with `what` after `ms` (so a hang names itself). */
export function within<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  let t: NodeJS.Timeout;
  return Promise.race([
    p.finally(() => clearTimeout(t)),
    new Promise<never>((_, reject) => {
      t = setTimeout(() => reject(new Error(`timed out: ${what}`)), ms);
    }),
  ]);
}
