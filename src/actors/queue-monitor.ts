import type { EventEmitter } from 'node:events';
import type { Logger } from '../util/logger.ts';
import type { Notification } from '../db/listener.ts';
import type { QueuedBuildRow, SchedulerDb } from './scheduler-db.ts';
import type { Scheduler } from './scheduler.ts';

export interface QueueMonitorOptions {
  db: SchedulerDb;
  scheduler: Scheduler;
  /** Emits `notification` and `reconnected` (src/db/listener.ts). */
  listener: EventEmitter;
  log: Logger;
  /** Poll backstop in seconds; <= 0 turns it off (queueTriggerTimerInS). */
  pollIntervalS: number;
  /** Builds loaded at once (each reads its .drv closure). */
  concurrency?: number;
}

type Work = 'added' | 'scan' | 'shares';

/**
 * Feeds queued builds into the scheduler. NOTIFYs are hints that set work
 * flags; one pass at a time does the flagged work:
 *   added  – loads unfinished builds with an id above the highest seen (a
 *            cursor over new rows only; never re-reads the queue);
 *   scan   – after restarts, cancels, deletes, bumps and reconnects: reads the
 *            (id, globalPriority) pairs of unfinished builds, loads the ones it
 *            does not hold, drops held ones no longer queued, applies bumps;
 *   shares – reloads jobset scheduling shares.
 * A reconnect of the LISTEN connection flags everything, since notifications
 * sent while disconnected are lost; the poll timer does the same.
 */
export class QueueMonitor {
  private lastId = 0;
  private readonly flags = new Set<Work>();
  private running: Promise<void> | null = null;
  private readonly loading = new Set<number>();
  private readonly dropAfterLoad = new Set<number>();
  private timer: NodeJS.Timeout | null = null;
  private stopped = false;
  private readonly onNotification = (n: Notification) => this.notified(n.channel);
  private readonly onReconnected = () => this.request('added', 'scan', 'shares');
  /** Running time vs waiting time, for metrics. */
  readonly time = { runningMs: 0, passes: 0 };

  constructor(private readonly o: QueueMonitorOptions) {}

  /** Loads the whole queue once, then follows notifications. */
  async start(): Promise<void> {
    this.o.listener.on('notification', this.onNotification);
    this.o.listener.on('reconnected', this.onReconnected);
    await this.request('shares', 'added');
    if (this.o.pollIntervalS > 0) {
      this.timer = setInterval(() => void this.request('added', 'scan'), this.o.pollIntervalS * 1000);
      this.timer.unref();
    }
  }

  stop(): Promise<void> {
    this.stopped = true;
    this.o.listener.off('notification', this.onNotification);
    this.o.listener.off('reconnected', this.onReconnected);
    if (this.timer) clearInterval(this.timer);
    return this.running ?? Promise.resolve();
  }

  private notified(channel: string): void {
    switch (channel) {
      case 'builds_added':
        void this.request('added');
        break;
      case 'builds_restarted':
      case 'builds_cancelled':
      case 'builds_deleted':
      case 'builds_bumped':
        void this.request('scan');
        break;
      case 'jobset_shares_changed':
        void this.request('shares');
        break;
    }
  }

  /** Flags work and runs passes until none is left; resolves when the flagged work is done. */
  request(...work: Work[]): Promise<void> {
    for (const w of work) this.flags.add(w);
    if (!this.running) {
      this.running = this.loop().finally(() => {
        this.running = null;
      });
    }
    return this.running;
  }

  private async loop(): Promise<void> {
    while (this.flags.size > 0 && !this.stopped) {
      const work = new Set(this.flags);
      this.flags.clear();
      const t0 = performance.now();
      try {
        if (work.has('shares')) await this.loadShares();
        if (work.has('added')) await this.loadNew();
        if (work.has('scan')) await this.scan();
      } catch (err) {
        this.o.log.error({ err: String((err as Error)?.stack ?? err) }, 'queue monitor pass failed; will retry');
        for (const w of work) this.flags.add(w);
        await new Promise((r) => setTimeout(r, 1000));
      }
      this.time.runningMs += performance.now() - t0;
      this.time.passes++;
    }
  }

  private async loadShares(): Promise<void> {
    for (const row of await this.o.db.jobsets(24 * 3600)) {
      const j = this.o.scheduler.jobsetRecord({ jobsetId: row.id, project: row.project, jobset: row.name });
      j.shares = row.schedulingShares;
      if (j.charges.length === 0) j.seconds = row.recentSeconds;
    }
  }

  private async loadNew(): Promise<void> {
    const limit = this.o.concurrency ?? 64;
    const inflight = new Set<Promise<void>>();
    for await (const batch of this.o.db.queuedBuilds(this.lastId)) {
      for (const row of batch) {
        this.lastId = Math.max(this.lastId, row.id);
        if (this.o.scheduler.graph.builds.has(row.id) || this.loading.has(row.id)) continue;
        const p = this.load(row).finally(() => inflight.delete(p));
        inflight.add(p);
        if (inflight.size >= limit) await Promise.race(inflight);
      }
    }
    await Promise.all(inflight);
  }

  private async load(row: QueuedBuildRow): Promise<void> {
    this.loading.add(row.id);
    try {
      const s = this.o.scheduler;
      await s.addBuild({
        id: row.id,
        jobset: s.jobsetRecord(row),
        job: row.job,
        drvPath: row.drvPath,
        timestamp: row.timestamp,
        maxSilent: row.maxSilent,
        timeout: row.timeout,
        localPriority: row.priority,
        globalPriority: row.globalPriority,
      });
      if (this.dropAfterLoad.delete(row.id)) s.dropBuild(row.id);
    } catch (err) {
      // A build whose .drv cannot be read stays queued; the next pass tries again.
      this.o.log.error({ build: row.id, drv: row.drvPath, err: (err as Error).message }, 'could not load build');
    } finally {
      this.loading.delete(row.id);
    }
  }

  private async scan(): Promise<void> {
    const queued = await this.o.db.queuedIds();
    const s = this.o.scheduler;
    for (const id of [...s.graph.builds.keys()]) if (!queued.has(id)) s.dropBuild(id);
    for (const id of this.loading) if (!queued.has(id)) this.dropAfterLoad.add(id);
    const missing: number[] = [];
    for (const [id, prio] of queued) {
      if (s.graph.builds.has(id)) s.bump(id, prio);
      else if (!this.loading.has(id)) missing.push(id);
    }
    // Builds restarted (finished → queued again) or otherwise not yet held.
    for (let i = 0; i < missing.length; i += 1000) {
      const rows = await this.o.db.buildsByIds(missing.slice(i, i + 1000));
      await Promise.all(rows.map((r) => this.load(r)));
    }
  }

  /** Builds being loaded right now (for status and tests). */
  get loadingCount(): number {
    return this.loading.size;
  }
}
