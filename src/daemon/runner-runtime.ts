import type { EventEmitter } from 'node:events';
import type { SchedulerStore } from '../actors/model.ts';
import { QueueMonitor } from '../actors/queue-monitor.ts';
import type { SchedulerDb } from '../actors/scheduler-db.ts';
import { Scheduler, type SchedulerConfig } from '../actors/scheduler.ts';
import { unixNow, type StepFinisher } from '../actors/builder-port.ts';
import type { Logger } from '../util/logger.ts';

export interface RunnerRuntimeOptions {
  config: SchedulerConfig & { queueTriggerTimerInS: number };
  db: SchedulerDb;
  store: SchedulerStore;
  /** Source of `notification` / `reconnected` events (the LISTEN connection). */
  listener: EventEmitter;
  log: Logger;
  finisher?: StepFinisher;
  onDispatch?: (latencyMs: number, waitMs: number) => void;
}

export interface RunnerRuntime {
  readonly scheduler: Scheduler;
  readonly monitor: QueueMonitor;
  /** Resolves when the queue present at start has been loaded (dispatch starts before that). */
  readonly initialLoad: Promise<void>;
  /** Drains: stop loading, stop dispatching, let running steps end or abort them after graceMs. */
  stop(graceMs: number): Promise<void>;
}

/**
 * The running scheduler: leftover busy steps of a previous run are aborted,
 * then the queue monitor loads the queue from the database alone and keeps
 * following it. Builders are added to `scheduler` as they connect.
 */
export async function startRunnerRuntime(o: RunnerRuntimeOptions): Promise<RunnerRuntime> {
  const aborted = await o.db.abortLeftovers(unixNow());
  if (aborted > 0) o.log.warn({ steps: aborted }, 'aborted steps left busy by a previous run');
  const scheduler = new Scheduler({ config: o.config, db: o.db, store: o.store, log: o.log, finisher: o.finisher, onDispatch: o.onDispatch });
  const monitor = new QueueMonitor({ db: o.db, scheduler, listener: o.listener, log: o.log, pollIntervalS: o.config.queueTriggerTimerInS });
  const initialLoad = monitor.start();
  return {
    scheduler,
    monitor,
    initialLoad,
    async stop(graceMs) {
      await monitor.stop();
      await scheduler.drain(graceMs);
    },
  };
}
