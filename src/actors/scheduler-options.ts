import type { Logger } from '../util/logger.ts';
import type { SchedulerDb } from '../db/scheduler-db-interface.ts';
import type { StepFinisher } from './builder-port.ts';
import type { DispatcherOptions } from './dispatcher.ts';
import type { Clock, SchedulerStore } from './model.ts';
import type { StepPreparer } from './prepare-step.ts';
import type { WriteGate } from './result-writer.ts';

export type SchedulerConfig = Pick<
  DispatcherOptions,
  'stepSortFn' | 'machineSortFn' | 'machineFreeFn' | 'maxRetries' | 'retryInterval' | 'retryBackoff' | 'maxUnsupportedTimeInS'
> & { dispatchTriggerTimerInS?: number; maxLogSize: number; maxOutputSize: number; maxSilentTime: number; buildTimeout: number; jobsetRepeats?: readonly string[] };

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
  /** The "prepare step" point (src/actors/prepare-step.ts); without one, runnable steps are queued at once. */
  preparer?: StepPreparer;
}

/**
 * Hydra's `maxRetries` counts attempts: a step that fails transiently is
 * tried again while its tries stay below it, so 5 means five attempts in all
 * (Rust runner state/mod.rs `tries < max_retries`; C++ builder.cc
 * `tries + 1 < maxTries`). The dispatcher counts retries after the first
 * attempt, one fewer.
 */
export function retriesAfterFirstAttempt(maxRetries: number): number {
  return Math.max(0, maxRetries - 1);
}
