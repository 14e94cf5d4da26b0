import type { Scheduler } from '../actors/scheduler.ts';

/** Per system, as Hydra's runners report the queues (Rust `BuildQueueStats`). */
export interface SystemQueueStats {
  /** Steps of the system that are runnable or running (Rust: the queue's jobs, scheduled ones included). */
  totalRunnable: number;
  /** Of those, the running ones (Rust: scheduled from this queue). */
  activeRunnable: number;
}

/**
 * The runner's totals under the names and meanings of Hydra's Rust runner
 * (`io/queue_runner.rs` QueueRunnerStats, served as `/status` →
 * `queueRunner`). hydra-send-stats turns these into statsd gauges and dies
 * on a missing one, so every figure is always a number.
 */
export interface QueueRunnerStats {
  status: string;
  time: string;
  uptime: number;
  supportedFeatures: string[];
  buildCount: number;
  jobsetCount: number;
  stepCount: number;
  runnableCount: number;
  queueStats: Record<string, SystemQueueStats>;
  nrBuildsRead: number;
  nrBuildsUnfinished: number;
  nrBuildsDone: number;
  nrBuildsSucceeded: number;
  nrBuildsFailed: number;
  nrStepsStarted: number;
  nrStepsDone: number;
  nrStepsBuilding: number;
  nrStepsRunnable: number;
  nrStepsUnfinished: number;
  nrUnsupportedSteps: number;
  nrUnsupportedStepsAborted: number;
  nrRetries: number;
  maxNrRetries: number;
  avgStepTimeMs: number;
  avgStepBuildTimeMs: number;
  totalStepTimeMs: number;
  totalStepBuildTimeMs: number;
  nrQueueWakeups: number;
  nrDispatcherWakeups: number;
  dispatchTimeMs: number;
  machinesTotal: number;
  machinesInUse: number;
}

/** Step time totals over all machines (Rust: the runner-wide counters the machines' add to). */
export function stepTimeTotals(s: Scheduler): { done: number; totalStepMs: number; totalBuildMs: number } {
  let done = 0;
  let totalStepMs = 0;
  let totalBuildMs = 0;
  for (const st of s.machineStats.values()) {
    done += st.stepsDone;
    totalStepMs += st.totalStepMs;
    totalBuildMs += st.totalBuildMs;
  }
  return { done, totalStepMs, totalBuildMs };
}

/** Per system: runnable and running steps (the Rust runner keys its queues by system). */
export function queueStatsBySystem(s: Scheduler): Record<string, SystemQueueStats> {
  const out: Record<string, SystemQueueStats> = {};
  const of = (system: string) => (out[system] ??= { totalRunnable: 0, activeRunnable: 0 });
  for (const q of s.dispatcher.platformQueues.values()) of(q.platform.system).totalRunnable += q.live;
  for (const r of s.running()) {
    const e = of(r.step.platform.system);
    e.totalRunnable++;
    e.activeRunnable++;
  }
  return out;
}

/** Runnable steps no machine can build now (Rust `nr_unsupported_steps`, set where it aborts them). */
export function unsupportedSteps(s: Scheduler): number {
  let n = 0;
  for (const q of s.dispatcher.platformQueues.values()) if (q.capable.size === 0) n += q.live;
  return n;
}

export function machinesInUse(s: Scheduler): number {
  let n = 0;
  for (const m of s.dispatcher.machines.values()) if (m.jobs.size > 0) n++;
  return n;
}

/**
 * `status` is "up" while the runner schedules (running, or draining its
 * jobs): hydra-send-stats reads anything else as down. Without a scheduler
 * (standby, starting) only status, time and uptime are known.
 */
export function queueRunnerStats(s: Scheduler | null, state: string, startedAt: number, now = Date.now()): QueueRunnerStats | Pick<QueueRunnerStats, 'status' | 'time' | 'uptime'> {
  const base = { time: new Date(now).toISOString(), uptime: (now - startedAt) / 1000 };
  if (!s || (state !== 'running' && state !== 'draining')) return { status: state, ...base };
  const c = s.counters;
  const t = stepTimeTotals(s);
  const features = new Set<string>();
  for (const m of s.dispatcher.machines.values()) for (const f of m.features) features.add(f);
  return {
    status: 'up',
    ...base,
    supportedFeatures: [...features].sort(),
    buildCount: s.graph.builds.size,
    jobsetCount: s.jobsets.size,
    stepCount: s.graph.steps.size,
    runnableCount: s.dispatcher.stats.runnable,
    queueStats: queueStatsBySystem(s),
    nrBuildsRead: c.buildsLoaded,
    nrBuildsUnfinished: s.graph.builds.size,
    nrBuildsDone: c.buildsFinished,
    nrBuildsSucceeded: c.buildsSucceeded,
    nrBuildsFailed: c.buildsFailed,
    nrStepsStarted: c.stepsStarted,
    nrStepsDone: t.done,
    nrStepsBuilding: s.activeJobs,
    nrStepsRunnable: s.dispatcher.stats.runnable,
    nrStepsUnfinished: s.graph.steps.size,
    nrUnsupportedSteps: unsupportedSteps(s),
    nrUnsupportedStepsAborted: c.stepsUnsupported,
    nrRetries: c.stepsRetried,
    maxNrRetries: c.maxTries,
    // Rust: total / nrStepsDone, integer milliseconds, 0 before the first step.
    avgStepTimeMs: t.done > 0 ? Math.floor(t.totalStepMs / t.done) : 0,
    avgStepBuildTimeMs: t.done > 0 ? Math.floor(t.totalBuildMs / t.done) : 0,
    totalStepTimeMs: Math.round(t.totalStepMs),
    totalStepBuildTimeMs: Math.round(t.totalBuildMs),
    nrQueueWakeups: c.queueWakeups,
    nrDispatcherWakeups: s.dispatcher.stats.rounds,
    dispatchTimeMs: Math.round(s.dispatcher.stats.roundMs),
    machinesTotal: s.dispatcher.machines.size,
    machinesInUse: machinesInUse(s),
  };
}
