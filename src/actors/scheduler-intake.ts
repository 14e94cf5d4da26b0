import type { JobsetRow } from '../db/scheduler-db-interface.ts';
import type { JobsetRecord } from './model.ts';
import type { AddBuildResult, QueuedBuild } from './step-graph.ts';

/**
 * What the queue monitor may ask of the scheduler: which builds it holds,
 * loading, dropping and bumping them, and the jobsets' shares. Nothing
 * here exposes the step graph or the dispatcher.
 */
export interface SchedulerIntake {
  hasBuild(id: number): boolean;
  /** The ids of the builds held now (a copy). */
  buildIds(): number[];
  /** Loads a queued build; a build that needs no building is recorded as ended. */
  addBuild(q: QueuedBuild): Promise<AddBuildResult['kind']>;
  /** The build is no longer queued (cancelled, deleted, finished elsewhere). */
  dropBuild(id: number): void;
  /** The build's global priority, as the database has it now. */
  bump(id: number, globalPriority: number): void;
  /** The record a build of this jobset is loaded under. */
  jobsetRecord(row: { jobsetId: number; project: string; jobset: string }): JobsetRecord;
  /** A jobset's scheduling shares and recent build seconds, as the database has them. */
  jobsetShares(row: JobsetRow): void;
  /** The monitor counts its wake-ups here (status and metrics read them). */
  readonly counters: { queueWakeups: number };
}
