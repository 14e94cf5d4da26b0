/** Errors of the CPU worker pool and the codecs it runs. */
import { errorKind, subjectErrorKind } from './hydrant-error.ts';

/** The worker pool's queue is full: the caller should `await pool.ready()` before submitting more. */
export class WorkerQueueFullError extends errorKind('WORKER_QUEUE_FULL') {
  constructor(readonly capacity: number) {
    super(`worker pool is at capacity (${capacity} tasks running or queued); await pool.ready() before submitting`);
  }
}

/** A task was submitted to (or was still queued in) a worker pool that is closing or closed. */
export class WorkerPoolClosedError extends errorKind('WORKER_POOL_CLOSED') {
  constructor(message = 'worker pool is closed') {
    super(message);
  }
}

/** Compressing or decompressing failed: unknown method or level, corrupt input, or the compressor tool failed. */
export class CompressionError extends subjectErrorKind('COMPRESSION_FAILED', 'method') {}
