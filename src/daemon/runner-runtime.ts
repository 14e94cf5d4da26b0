import type { EventEmitter } from 'node:events';
import type { SchedulerStore } from '../actors/model.ts';
import type { StepPreparer } from '../actors/prepare-step.ts';
import { QueueMonitor } from '../actors/queue-monitor.ts';
import type { SchedulerDb } from '../db/scheduler-db-interface.ts';
import { Scheduler, type SchedulerConfig, type WriteGate } from '../actors/scheduler.ts';
import { unixNow, type StepFinisher } from '../actors/builder-port.ts';
import type { Logger } from '../util/logger.ts';
import { SshMachines } from './ssh-machines.ts';

export interface RunnerRuntimeOptions {
  config: SchedulerConfig & {
    queueTriggerTimerInS: number;
    /** Machines files of SSH build machines (none: no SSH machines). */
    machinesFiles?: readonly string[];
    machinesFilesCheckInS?: number;
    /** Where SSH machines' build logs go. */
    hydraDataDir?: string;
  };
  db: SchedulerDb;
  store: SchedulerStore;
  /** Source of `notification` / `reconnected` events (the LISTEN connection). */
  listener: EventEmitter;
  log: Logger;
  finisher?: StepFinisher;
  onDispatch?: (latencyMs: number, waitMs: number) => void;
  /** Result writes wait for it (the runner lock held); see Scheduler. */
  gate?: WriteGate;
  maxPendingWrites?: number;
  /** The prepare-step point (content-addressed resolution). */
  preparer?: StepPreparer;
}

export interface RunnerRuntime {
  readonly scheduler: Scheduler;
  readonly monitor: QueueMonitor;
  /** Resolves when the queue present at start has been loaded (dispatch starts before that). */
  readonly initialLoad: Promise<void>;
  /** The database went away (lock lost): no new dispatch; results wait for the database. */
  interrupted(): void;
  /**
   * The database is back and the lock re-taken: busy rows that are none of
   * this runner's attempts are aborted, dispatch resumes and the queue is
   * re-scanned (notifications and loads were lost meanwhile).
   */
  recover(): Promise<void>;
  /** Re-reads the machines files (SIGHUP); nothing without any. */
  rereadMachines(): void;
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
  const scheduler = new Scheduler({
    config: o.config, db: o.db, store: o.store, log: o.log, finisher: o.finisher, onDispatch: o.onDispatch, gate: o.gate, maxPendingWrites: o.maxPendingWrites, preparer: o.preparer,
  });
  const monitor = new QueueMonitor({ db: o.db, scheduler, listener: o.listener, log: o.log, pollIntervalS: o.config.queueTriggerTimerInS });
  const initialLoad = monitor.start();
  const files = o.config.machinesFiles ?? [];
  const sshMachines =
    files.length > 0
      ? new SshMachines({ files, checkIntervalS: o.config.machinesFilesCheckInS ?? 30, hydraDataDir: o.config.hydraDataDir ?? '/var/lib/hydra', scheduler, log: o.log })
      : null;
  sshMachines?.start();
  return {
    scheduler,
    monitor,
    initialLoad,
    interrupted() {
      scheduler.holdDispatch('database');
    },
    rereadMachines() {
      sshMachines?.reread();
    },
    async recover() {
      const orphans = await scheduler.reconcile();
      if (orphans > 0) o.log.warn({ steps: orphans }, 'aborted busy steps that no running attempt owns');
      scheduler.releaseDispatch('database');
      await monitor.request('added', 'scan', 'shares');
    },
    async stop(graceMs) {
      // A load may be waiting for the database to come back: it gives up first.
      scheduler.abandonWaitingWrites();
      sshMachines?.stopWatching();
      await monitor.stop();
      await scheduler.drain(graceMs);
      await sshMachines?.close();
    },
  };
}
