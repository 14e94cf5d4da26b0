import type { EventEmitter } from 'node:events';
import type { Logger } from '../util/logger.ts';
import type { Notification } from '../db/listener.ts';
import { parseDerivationPath } from '../nix/store-path.ts';
import { unixNow } from './builder-port.ts';
import { permanentLoadFailure } from './load-failure.ts';
import type { QueuedBuildRow, SchedulerDb } from '../db/scheduler-db-interface.ts';
import type { SchedulerIntake } from './scheduler-intake.ts';

export interface QueueMonitorOptions {
  db: SchedulerDb;
  /** The scheduler, seen only through its intake: never its graph or dispatcher. */
  scheduler: SchedulerIntake;
  /** Emits `notification` and `reconnected` (src/db/listener.ts). */
  listener: EventEmitter;
  log: Logger;
  /** Poll backstop in seconds; <= 0 turns it off (queueTriggerTimerInS). */
  pollIntervalS: number;
  /** Builds loaded at once (each reads its .drv closure). */
  concurrency?: number;
  /**
   * How long a build that failed to load for a transient reason (worker
   * pool, Nix, database) waits before a scan tries it again; Hydra's queue
   * monitor waits 10 s after a failed pass.
   */
  retryDelayMs?: number;
}

type Work = 'added' | 'scan' | 'shares';

/** What the `builds_added` hints since the last `added` pass ask for beyond the new ids. */
interface AddedHints {
  /** Read again from above this id: the lowest new id a Hydra evaluator announced, minus one. */
  readFrom: number;
  /** A hint without that id: look for unfinished builds at or below the high-water mark that are not held. */
  checkHeld: boolean;
}

const NO_HINTS: AddedHints = Object.freeze({ readFrom: Number.POSITIVE_INFINITY, checkHeld: false });

/**
 * Feeds queued builds into the scheduler. NOTIFYs are hints that set work
 * flags; one pass at a time does the flagged work:
 *   added  – loads unfinished builds with an id above the highest seen (a
 *            cursor over new rows only), plus those a transaction committed
 *            late, below that mark (see AddedHints and docs/ARCHITECTURE.md);
 *   scan   – after restarts, cancels, deletes, bumps and reconnects: reads the
 *            (id, globalPriority) pairs of unfinished builds, loads the ones it
 *            does not hold, drops held ones no longer queued, applies bumps;
 *   shares – reloads jobset scheduling shares.
 * A reconnect of the LISTEN connection flags everything, since notifications
 * sent while disconnected are lost; the poll timer does the same.
 */
export class QueueMonitor {
  private lastId = 0;
  private hints: AddedHints = NO_HINTS;
  private retryTimer: NodeJS.Timeout | null = null;
  private readonly flags = new Set<Work>();
  private running: Promise<void> | null = null;
  private readonly loading = new Set<number>();
  private readonly dropAfterLoad = new Set<number>();
  private timer: NodeJS.Timeout | null = null;
  private stopped = false;
  private readonly onNotification = (n: Notification) => this.notified(n.channel, n.payload);
  private readonly onReconnected = () => this.wake('added', 'scan', 'shares');
  /** Running time vs waiting time, for metrics. */
  readonly time = { runningMs: 0, passes: 0 };
  /** Builds this monitor ended as aborted because their derivation cannot be loaded. */
  unloadableBuilds = 0;

  constructor(private readonly o: QueueMonitorOptions) {}

  /** Loads the whole queue once, then follows notifications. */
  async start(): Promise<void> {
    this.o.listener.on('notification', this.onNotification);
    this.o.listener.on('reconnected', this.onReconnected);
    await this.request('shares', 'added');
    if (this.o.pollIntervalS > 0) {
      this.timer = setInterval(() => void this.wake('added', 'scan'), this.o.pollIntervalS * 1000);
      this.timer.unref();
    }
  }

  stop(): Promise<void> {
    this.stopped = true;
    this.o.listener.off('notification', this.onNotification);
    this.o.listener.off('reconnected', this.onReconnected);
    if (this.timer) clearInterval(this.timer);
    if (this.retryTimer) clearTimeout(this.retryTimer);
    return this.running ?? Promise.resolve();
  }

  /** A wake-up from outside (a notification, a LISTEN reconnect, the poll timer): counted, then its work flagged. */
  private wake(...work: Work[]): Promise<void> {
    this.o.scheduler.counters.queueWakeups++;
    return this.request(...work);
  }

  private notified(channel: string, payload = ''): void {
    switch (channel) {
      case 'builds_added':
        this.addedHint(payload);
        void this.wake('added');
        break;
      case 'builds_restarted':
      case 'builds_cancelled':
      case 'builds_deleted':
      case 'builds_bumped':
        void this.wake('scan');
        break;
      case 'jobset_shares_changed':
        void this.wake('shares');
        break;
    }
  }

  /**
   * A `builds_added` NOTIFY arrives when its transaction commits, and
   * concurrent evaluations may commit in the opposite order of their build
   * ids: ids at or below the high-water mark can appear late. Hydra's
   * evaluator names its lowest new id in the payload, so the next pass reads
   * from there (hydrant submit and PUT /build do the same); any other hint (Hydra's
   * trigger, its own runner) makes the pass compare the unfinished ids with the held ones.
   */
  private addedHint(payload: string): void {
    const lowest = /^[1-9][0-9]{0,14}$/.test(payload) ? Number(payload) : null;
    this.hints = lowest === null
      ? { ...this.hints, checkHeld: true }
      : { ...this.hints, readFrom: Math.min(this.hints.readFrom, lowest - 1) };
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
      const hints = work.has('added') ? this.hints : NO_HINTS;
      if (work.has('added')) this.hints = NO_HINTS;
      const t0 = performance.now();
      try {
        if (work.has('shares')) await this.loadShares();
        if (work.has('added')) await this.loadNew(hints);
        if (work.has('scan')) await this.scan();
      } catch (err) {
        this.o.log.error({ err: String((err as Error)?.stack ?? err) }, 'queue monitor pass failed; will retry');
        for (const w of work) this.flags.add(w);
        this.hints = { readFrom: Math.min(this.hints.readFrom, hints.readFrom), checkHeld: this.hints.checkHeld || hints.checkHeld };
        await new Promise((r) => setTimeout(r, 1000));
      }
      this.time.runningMs += performance.now() - t0;
      this.time.passes++;
    }
  }

  private async loadShares(): Promise<void> {
    for (const row of await this.o.db.jobsets(24 * 3600)) this.o.scheduler.jobsetShares(row);
  }

  private async loadNew(hints: AddedHints): Promise<void> {
    const mark = this.lastId;
    // Held before the reads: a build the scheduler ends (and drops) while a
    // read's snapshot still shows it queued must not be loaded again.
    const held = mark > 0 ? this.heldIds() : new Set<number>();
    if (hints.checkHeld && mark > 0) {
      const queued = await this.o.db.queuedIds();
      await this.loadMissing([...queued.keys()].filter((id) => id <= mark && !held.has(id)));
    }
    const limit = this.o.concurrency ?? 64;
    const inflight = new Set<Promise<void>>();
    for await (const batch of this.o.db.queuedBuilds(Math.min(mark, hints.readFrom))) {
      for (const row of batch) {
        this.lastId = Math.max(this.lastId, row.id);
        if (held.has(row.id) || this.o.scheduler.hasBuild(row.id) || this.loading.has(row.id)) continue;
        const p = this.load(row).finally(() => inflight.delete(p));
        inflight.add(p);
        if (inflight.size >= limit) await Promise.race(inflight);
      }
    }
    await Promise.all(inflight);
  }

  /** Ids of the builds the scheduler holds or that are being loaded. */
  private heldIds(): Set<number> {
    const ids = new Set(this.o.scheduler.buildIds());
    for (const id of this.loading) ids.add(id);
    return ids;
  }

  private async load(row: QueuedBuildRow): Promise<void> {
    this.loading.add(row.id);
    try {
      // Nothing but a derivation in the store is ever read for a build row.
      parseDerivationPath(row.drvPath);
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
      if (this.dropAfterLoad.has(row.id)) s.dropBuild(row.id);
    } catch (err) {
      const cause = permanentLoadFailure(err);
      if (cause !== null) await this.abortUnloadable(row, cause);
      else {
        this.o.log.warn({ build: row.id, drv: row.drvPath, err: String((err as Error)?.message ?? err) }, 'could not load build; will retry');
        this.retryLater();
      }
    } finally {
      this.loading.delete(row.id);
      // Also after a failed load: a later load of the same id (restarted) must not be dropped.
      this.dropAfterLoad.delete(row.id);
    }
  }

  /** Ends a build that can never load (as Hydra aborts one whose .drv is gone), once. */
  private async abortUnloadable(row: QueuedBuildRow, cause: string): Promise<void> {
    const errorMsg = `could not load the derivation: ${cause}`;
    try {
      const ended = await this.o.db.buildUnloadable({ buildId: row.id, drvPath: row.drvPath, system: row.system, errorMsg, now: unixNow() });
      if (!ended) return;
      this.unloadableBuilds++;
      this.o.log.error({ build: row.id, drv: row.drvPath, cause }, 'aborted build: its derivation cannot be loaded');
    } catch (err) {
      this.o.log.warn({ build: row.id, err: String((err as Error)?.message ?? err) }, 'could not abort an unloadable build; will retry');
      this.retryLater();
    }
  }

  /** One scan after retryDelayMs picks up every build whose load failed for a transient reason. */
  private retryLater(): void {
    if (this.retryTimer || this.stopped) return;
    this.retryTimer = setTimeout(() => {
      this.retryTimer = null;
      void this.request('scan');
    }, this.o.retryDelayMs ?? 10_000);
    this.retryTimer.unref();
  }

  private async scan(): Promise<void> {
    const held = this.heldIds();
    const queued = await this.o.db.queuedIds();
    const s = this.o.scheduler;
    for (const id of s.buildIds()) if (!queued.has(id)) s.dropBuild(id);
    for (const id of this.loading) if (!queued.has(id)) this.dropAfterLoad.add(id);
    const missing: number[] = [];
    for (const [id, prio] of queued) {
      if (s.hasBuild(id)) s.bump(id, prio);
      else if (!held.has(id)) missing.push(id);
    }
    // Builds restarted (finished → queued again) or otherwise not yet held.
    await this.loadMissing(missing);
  }

  /** Loads the builds with these ids that are still queued and not held. */
  private async loadMissing(ids: readonly number[]): Promise<void> {
    for (let i = 0; i < ids.length; i += 1000) {
      const rows = await this.o.db.buildsByIds(ids.slice(i, i + 1000));
      await Promise.all(rows.filter((r) => !this.o.scheduler.hasBuild(r.id) && !this.loading.has(r.id)).map((r) => this.load(r)));
    }
  }

  /** Builds being loaded right now (for status and tests). */
  get loadingCount(): number {
    return this.loading.size;
  }
}
