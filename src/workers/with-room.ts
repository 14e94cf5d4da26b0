import { WorkerQueueFullError } from '../errors/index.ts';
import type { WorkerPool } from './pool.ts';

/** Submits a task once the pool has room, waiting (never failing) when its queue is full. */
export async function withRoom<T>(pool: WorkerPool, task: () => Promise<T>): Promise<T> {
  for (;;) {
    await pool.ready();
    try {
      return await task();
    } catch (err) {
      if (!(err instanceof WorkerQueueFullError)) throw err;
    }
  }
}
