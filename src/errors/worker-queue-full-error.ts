import { HydrantError } from './hydrant-error.ts';

/** The worker pool's queue is full: the caller should `await pool.ready()` before submitting more. */
export class WorkerQueueFullError extends HydrantError {
  readonly code = 'WORKER_QUEUE_FULL';
  constructor(readonly capacity: number) {
    super(`worker pool is at capacity (${capacity} tasks running or queued); await pool.ready() before submitting`);
  }
}
