/**
 * A SchedulerDb that keeps the queue in memory and answers every write at
 * once: the runner's queue monitor, scheduler, step graph and dispatcher run
 * as in production while nothing waits for PostgreSQL, so a bench measures
 * their CPU alone (bench dispatch-core). Writes are counted, not kept.
 */
import type { QueuedBuildRow, SchedulerDb } from '../src/db/scheduler-db-interface.ts';

export class NullDb implements SchedulerDb {
  private readonly queued = new Map<number, QueuedBuildRow>();
  private nextStepnr = 1;
  readonly writes = { started: 0, succeeded: 0, failed: 0, busy: 0, other: 0 };

  /** Builds queued as rows are: ids ascending, all in jobset 1 (`nixpkgs:trunk`). */
  constructor(drvPaths: readonly string[], system = 'x86_64-linux') {
    drvPaths.forEach((drvPath, i) => {
      const id = i + 1;
      this.queued.set(id, {
        id, jobsetId: 1, project: 'nixpkgs', jobset: 'trunk', job: `job${id}`, drvPath, system,
        maxSilent: 3600, timeout: 36000, timestamp: 0, priority: 0, globalPriority: 0,
      });
    });
  }

  private ended(ids: readonly number[]): number[] {
    const out: number[] = [];
    for (const id of ids) if (this.queued.delete(id)) out.push(id);
    return out;
  }

  async abortLeftovers(): Promise<number> {
    return 0;
  }
  async abortOrphans(): Promise<number> {
    return 0;
  }
  async stepsStarted(starts: readonly unknown[]): Promise<number[]> {
    this.writes.started += starts.length;
    return starts.map(() => this.nextStepnr++);
  }
  async stepBusy(): Promise<void> {
    this.writes.busy++;
  }
  async stepSucceeded(a: { builds: readonly { id: number }[] }): Promise<number[]> {
    this.writes.succeeded++;
    return this.ended(a.builds.map((b) => b.id));
  }
  async stepsSucceeded(list: readonly { builds: readonly { id: number }[] }[]): Promise<number[][]> {
    return Promise.all(list.map((a) => this.stepSucceeded(a)));
  }
  async stepFailed(a: { builds: readonly { id: number }[] }): Promise<number[]> {
    this.writes.failed++;
    return this.ended(a.builds.map((b) => b.id));
  }
  async dependentsFailed(a: { builds: readonly { id: number }[] }): Promise<number[]> {
    this.writes.other++;
    return this.ended(a.builds.map((b) => b.id));
  }
  async stepAborted(): Promise<void> {
    this.writes.other++;
  }
  async buildCached(a: { buildId: number }): Promise<boolean> {
    return this.ended([a.buildId]).length > 0;
  }
  async buildCachedFailure(a: { buildId: number }): Promise<boolean> {
    return this.ended([a.buildId]).length > 0;
  }
  async buildUnloadable(a: { buildId: number }): Promise<boolean> {
    return this.ended([a.buildId]).length > 0;
  }
  async buildsCachedFailure(list: readonly { buildId: number }[]): Promise<number[]> {
    return this.ended(list.map((c) => c.buildId));
  }
  async stepResolved(): Promise<{ stepnr: number; inserted: boolean }> {
    return { stepnr: this.nextStepnr++, inserted: true };
  }
  async stepSubstituted(): Promise<void> {
    this.writes.other++;
  }
  async realisedOutputs(): Promise<{ drvPath: string; name: string; path: string }[]> {
    return [];
  }
  async jobsets(): Promise<{ id: number; project: string; name: string; schedulingShares: number; recentSeconds: number }[]> {
    return [{ id: 1, project: 'nixpkgs', name: 'trunk', schedulingShares: 100, recentSeconds: 0 }];
  }
  /** In batches of 10,000 rows, as the PostgreSQL cursor reads them. */
  async *queuedBuilds(afterId: number): AsyncIterable<QueuedBuildRow[]> {
    const rows = [...this.queued.values()].filter((r) => r.id > afterId).sort((a, b) => a.id - b.id);
    for (let i = 0; i < rows.length; i += 10_000) yield rows.slice(i, i + 10_000);
  }
  async queuedIds(): Promise<Map<number, number>> {
    return new Map([...this.queued.values()].map((r) => [r.id, r.globalPriority]));
  }
  async buildsByIds(ids: readonly number[]): Promise<QueuedBuildRow[]> {
    return ids.flatMap((id) => this.queued.get(id) ?? []);
  }
  async failedBefore(): Promise<{ build: number; status: number } | null> {
    return null;
  }
  async failedPaths(): Promise<Set<string>> {
    return new Set();
  }
}
