import type { Scheduler } from '../../actors/scheduler.ts';
import type { Lifecycle } from '../../daemon/lifecycle.ts';
import type { Handler } from '../router.ts';

/** `GET /status`: the daemon's state and the scheduler's totals. */
export function getStatus(lifecycle: Lifecycle, scheduler: () => Scheduler | null, startedAt: number): Handler {
  return () => {
    const s = scheduler();
    return {
      state: lifecycle.state,
      startedAt: Math.floor(startedAt / 1000),
      uptimeS: Math.floor((Date.now() - startedAt) / 1000),
      ...(s && {
        machines: s.dispatcher.machines.size,
        buildsQueued: s.graph.builds.size,
        steps: s.graph.steps.size,
        runnable: s.dispatcher.stats.runnable,
        retryWaiting: s.dispatcher.stats.retryWaiting,
        running: s.activeJobs,
        counters: { ...s.counters },
      }),
    };
  };
}
