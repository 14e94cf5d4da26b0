import type { Scheduler } from '../actors/scheduler.ts';
import type { DaemonState } from '../machines/index.ts';
import { LiveFeed } from '../status/live-feed.ts';
import { machineDiagrams } from '../status/machine-diagrams.ts';
import type { Queryable } from '../db/chunks.ts';
import type { Router } from './router.ts';
import type { LogCache } from '../status/build-log.ts';
import { eventsHandler } from './routes/events.ts';
import { staticUi } from './routes/static-ui.ts';
import { registerProvisionerStatusRoutes } from './routes/provisioner-status.ts';
import { registerStatusRoutes } from './routes/status.ts';
import { registerHistoryRoutes } from './routes/history.ts';

export interface ViewerContext {
  readonly lifecycle: { readonly state: DaemonState };
  /** null until the scheduler runs. */
  scheduler(): Scheduler | null;
  readonly startedAt: number;
  /** Hydra's database, for builds that are not queued (finished ones) and step rows' logs. */
  readonly db?: Queryable;
  /** Where build logs are written (`<hydraDataDir>/build-logs`). */
  readonly hydraDataDir?: string;
  /** Binary caches whose `log/<drv>` is served when a log is not in hydraDataDir. */
  readonly caches?: readonly LogCache[];
}

/**
 * The read-only routes a viewer uses, on any scheduler: the status API, the
 * live feed (`/events`), the visualizer's files and the machine diagrams.
 * The daemon serves them next to its write and metrics routes; tests and
 * benchmarks serve them for a scheduler of their own. Returns the feed.
 */
export async function registerViewerRoutes(router: Router, ctx: ViewerContext): Promise<LiveFeed> {
  const feed = new LiveFeed(() => ctx.scheduler());
  const ui = await staticUi();
  router
    .get('/events', eventsHandler(feed, () => ctx.scheduler()))
    .get('/ui/machines.json', () => machineDiagrams())
    .get('/', ui)
    .get('/ui', ui)
    .get('/ui/:file', ui);
  registerStatusRoutes(router, { lifecycle: ctx.lifecycle, scheduler: () => ctx.scheduler(), startedAt: ctx.startedAt, feed, db: ctx.db, hydraDataDir: ctx.hydraDataDir, caches: ctx.caches });
  registerHistoryRoutes(router, { db: ctx.db, scheduler: () => ctx.scheduler() });
  registerProvisionerStatusRoutes(router, { scheduler: () => ctx.scheduler(), startedAt: ctx.startedAt });
  return feed;
}
