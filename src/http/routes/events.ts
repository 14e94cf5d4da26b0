import type { Scheduler } from '../../actors/scheduler.ts';
import { HttpError } from '../../errors/index.ts';
import type { LiveFeed } from '../../status/live-feed.ts';
import { buildClosure } from '../../status/closure.ts';
import type { Handler } from '../router.ts';

/**
 * `GET /events?build=ID`: server-sent events for a viewer: `steps` (the
 * build's steps that changed state), `machines` (machine states and jobs),
 * `resync` (too much changed: re-read the build). Without `build`, or for
 * a build that is not queued in this runner, machine events only.
 */
export function eventsHandler(feed: LiveFeed, scheduler: () => Scheduler | null): Handler {
  return (req, res) => {
    const s = scheduler();
    if (!s) throw new HttpError(503, 'the runner is not running');
    let steps: Set<number> | null = null;
    const build = req.url.searchParams.get('build');
    if (build !== null) {
      const b = s.graph.builds.get(Number(build));
      // A build not queued here (finished, or not loaded yet) has no step events: machine events only.
      if (b) steps = new Set(buildClosure(b).steps.map((step) => step.id));
    }
    res.writeHead(200, { 'content-type': 'text/event-stream; charset=utf-8', 'cache-control': 'no-store', connection: 'keep-alive' });
    res.write('retry: 2000\n\n');
    const unsubscribe = feed.subscribe({
      steps,
      send: (event, data) => res.write(`event: ${event}\ndata: ${JSON.stringify(data)}\n\n`),
    });
    const heartbeat = setInterval(() => res.write(': keep-alive\n\n'), 15_000);
    heartbeat.unref();
    req.raw.on('close', () => {
      clearInterval(heartbeat);
      unsubscribe();
    });
    return undefined;
  };
}
