import { HydrantError } from './hydrant-error.ts';

/** A task was submitted to (or was still queued in) a worker pool that is closing or closed. */
export class WorkerPoolClosedError extends HydrantError {
  readonly code = 'WORKER_POOL_CLOSED';
  constructor(message = 'worker pool is closed') {
    super(message);
  }
}
