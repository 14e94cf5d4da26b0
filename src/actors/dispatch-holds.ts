import type { Logger } from '../util/logger.ts';

/**
 * Why dispatch is paused besides stopping: a database outage, write
 * backpressure. Several reasons may hold it at once; dispatch resumes when
 * the last is released, unless stopping has begun.
 */
export class DispatchHolds {
  private readonly holds = new Set<string>();
  private stopped = false;

  constructor(private readonly o: { pause(): void; resume(): void; log: Logger }) {}

  hold(reason: string): void {
    if (this.holds.has(reason)) return;
    this.holds.add(reason);
    this.o.pause();
    this.o.log.info({ reason }, 'dispatch paused');
  }

  release(reason: string): void {
    if (!this.holds.delete(reason)) return;
    this.o.log.info({ reason, stillHeld: [...this.holds] }, 'dispatch hold released');
    if (this.holds.size === 0 && !this.stopped) this.o.resume();
  }

  /** Stopping: dispatch stays paused whatever is released. */
  stop(): void {
    this.stopped = true;
    this.o.pause();
  }
}
