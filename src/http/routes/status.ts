import type { Scheduler } from '../../actors/scheduler.ts';
import type { StepRecord } from '../../actors/model.ts';
import type { DaemonState } from '../../machines/index.ts';
import { HttpError } from '../../errors/index.ts';
import { pageOf, takePage } from '../../status/paging.ts';
import { buildTree } from '../../status/build-tree.ts';
import { busyName, machineView, seconds, stepView, urgencyOrder } from '../../status/views.ts';
import type { Router } from '../router.ts';
import type { LiveFeed } from '../../status/live-feed.ts';
import { stepLifecycle } from '../../machines/index.ts';
import type { Queryable } from '../../db/chunks.ts';
import { STORE_DIR } from '../../nix/store-path.ts';
import { buildHistory } from '../../status/build-history.ts';
import { queueRunnerStats } from '../../status/queue-runner-stats.ts';
import { isDrvPath, LOG_TAIL_DEFAULT, LOG_TAIL_MAX, readLog, type LogCache, type LogRange } from '../../status/build-log.ts';
import { readStepDrv } from '../../db/build-history.ts';
import type { ServerResponse } from 'node:http';

export interface StatusContext {
  /** The daemon's lifecycle (an actor of the daemon machine): only its state is read. */
  readonly lifecycle: { readonly state: DaemonState };
  /** Step transition histories (recorded while a viewer watches). */
  readonly feed?: LiveFeed;
  /** null until the scheduler runs. */
  scheduler(): Scheduler | null;
  readonly startedAt: number;
  /** Hydra's database: builds that are not queued here (finished, or unknown to this runner) are read from it. */
  readonly db?: Queryable;
  /** Where the runner writes build logs (`<hydraDataDir>/build-logs/…`). */
  readonly hydraDataDir?: string;
  /** Binary caches whose `log/<drv>` is read when the log is not here. */
  readonly caches?: readonly LogCache[];
}

const intParam = (v: string | undefined, what: string): number => {
  const n = Number(v);
  if (!Number.isSafeInteger(n) || n < 0) throw new HttpError(400, `${what} must be a non-negative integer`);
  return n;
};

/**
 * `tail=BYTES` (the default: the last 64 KiB), or `offset=BYTE` with
 * `length=BYTES` (default 64 KiB); at most 4 MiB either way.
 */
function rangeOf(url: URL): LogRange {
  const q = url.searchParams;
  const bytes = (name: string, min: number): number | null => {
    const v = q.get(name);
    if (v === null) return null;
    const n = Number(v);
    if (!Number.isSafeInteger(n) || n < min) throw new HttpError(400, `${name} must be ${min === 0 ? 'a non-negative' : 'a positive'} integer (bytes)`);
    return n;
  };
  const tail = bytes('tail', 1);
  const offset = bytes('offset', 0);
  const length = bytes('length', 1);
  if (tail !== null && (offset !== null || length !== null)) throw new HttpError(400, 'give tail, or offset and length, not both');
  if (offset !== null || length !== null) return { offset: offset ?? 0, length: Math.min(length ?? LOG_TAIL_DEFAULT, LOG_TAIL_MAX) };
  return { tail: Math.min(tail ?? LOG_TAIL_DEFAULT, LOG_TAIL_MAX) };
}

/** Steps of one state, in the graph's (insertion) order. */
function* stepsIn(s: Scheduler, state: StepRecord['state']): IterableIterator<StepRecord> {
  for (const step of s.graph.steps.values()) if (step.state === state) yield step;
}

/** Machines keyed by the name their steps' BuildSteps.machine rows carry (the machine id). */
function machinesByName(s: Scheduler) {
  return Object.fromEntries([...s.dispatcher.machines.values()].map((m) => [m.id, machineView(s, m)]));
}

/**
 * The read-only status endpoints (REFERENCE §4). Every list is bounded
 * (`offset`/`limit`), so a 300k-step queue costs one pass over the graph at
 * most, and the response stays small.
 */
export function registerStatusRoutes(router: Router, ctx: StatusContext): void {
  const sched = (): Scheduler => {
    const s = ctx.scheduler();
    if (!s) throw new HttpError(503, `the runner is ${ctx.lifecycle.state}`);
    return s;
  };

  // Hydra's web UI shows this document (queue-runner-status) and hydra-send-stats reads its
  // `queueRunner` (Rust runner io/response_types.rs DumpResponse: queueRunner, machines, jobsets).
  router.get('/status', () => {
    const s = ctx.scheduler();
    return {
      status: ctx.lifecycle.state,
      startedAt: seconds(ctx.startedAt),
      uptime: Math.floor((Date.now() - ctx.startedAt) / 1000),
      queueRunner: queueRunnerStats(s, ctx.lifecycle.state, ctx.startedAt),
      ...(s && {
        machines: machinesByName(s),
        machinesCount: s.dispatcher.machines.size,
        buildsQueued: s.graph.builds.size,
        steps: s.graph.steps.size,
        runnable: s.dispatcher.stats.runnable,
        retryWaiting: s.dispatcher.stats.retryWaiting,
        running: s.activeJobs,
        dispatchRounds: s.dispatcher.stats.rounds,
        counters: { ...s.counters },
      }),
    };
  });

  router.get('/status/machines', () => {
    const s = sched();
    return { machines: machinesByName(s), machinesCount: s.dispatcher.machines.size };
  });

  router.get('/status/jobsets', () => {
    const s = sched();
    const jobsets = Object.fromEntries(
      [...s.jobsets.values()].map((j) => [`${j.project}:${j.name}`, { id: j.id, project: j.project, name: j.name, shares: j.shares, seconds: j.seconds }]),
    );
    return { jobsets, jobsetCount: s.jobsets.size };
  });

  router.get('/status/builds', (req) => {
    const s = sched();
    const { items, total } = takePage(s.graph.builds.values(), pageOf(req.url), (b) => ({
      id: b.id,
      jobsetId: b.jobset.id,
      project: b.jobset.project,
      jobset: b.jobset.name,
      drvPath: b.toplevel?.drvPath ?? null,
      state: b.toplevel?.state ?? null,
      globalPriority: b.globalPriority,
      localPriority: b.localPriority,
      maxSilent: b.maxSilent,
      timeout: b.timeout,
    }));
    return { builds: items, buildCount: total };
  });

  router.get('/status/steps', (req) => {
    const s = sched();
    const { items, total } = takePage(s.running(), pageOf(req.url), (r) => ({
      ...stepView(r.step),
      jobId: r.jobId,
      machine: r.machine,
      buildId: r.buildId,
      startedAt: seconds(r.startedAt),
      busy: r.busy,
      busyName: busyName(r.busy),
    }));
    return { steps: items, stepCount: total };
  });

  router.get('/status/runnable', (req) => {
    const s = sched();
    const { items, total } = takePage(stepsIn(s, 'runnable'), pageOf(req.url), (step) => ({ ...stepView(step), waiting: s.dispatcher.waitingReason(step) }));
    return { steps: items, stepCount: total };
  });

  router.get('/status/queues', () => {
    const s = sched();
    const queues = Object.fromEntries(
      [...s.dispatcher.platformQueues.values()].map((q) => [
        q.platform.key,
        {
          system: q.platform.system,
          features: q.platform.features,
          runnable: q.live,
          capableMachines: [...q.capable].map((m) => m.id),
          freeMachines: q.listedFree.size,
          unsupportedSince: seconds(q.unsupportedSince),
        },
      ]),
    );
    return { queues, queueCount: s.dispatcher.platformQueues.size };
  });

  router.get('/status/queues/jobs', (req) => {
    const s = sched();
    const { limit } = pageOf(req.url, 20, 200);
    const byPlatform = new Map<string, StepRecord[]>();
    for (const step of stepsIn(s, 'runnable')) {
      const list = byPlatform.get(step.platform.key);
      if (list) list.push(step);
      else byPlatform.set(step.platform.key, [step]);
    }
    const queues = Object.fromEntries(
      [...byPlatform].map(([key, steps]) => [key, steps.sort(urgencyOrder).slice(0, limit).map((step) => ({ ...stepView(step), waiting: s.dispatcher.waitingReason(step) }))]),
    );
    return { queues };
  });

  router.get('/status/queues/scheduled', (req) => {
    const s = sched();
    const { limit } = pageOf(req.url);
    const steps = s.dispatcher.retryWaiting(limit).map((step) => ({ ...stepView(step), retryAt: seconds(step.retryAt), waiting: s.dispatcher.waitingReason(step) }));
    return { steps, stepCount: s.dispatcher.stats.retryWaiting };
  });

  router.get('/status/step/:id', (req) => {
    const s = sched();
    const id = Number(req.params.id);
    if (!Number.isSafeInteger(id)) throw new HttpError(400, 'step id must be an integer');
    let step: StepRecord | undefined;
    for (const x of s.graph.steps.values()) if (x.id === id) step = x;
    step ??= ctx.feed?.recentStep(id);
    if (!step) throw new HttpError(404, `step ${id} is not in the queue`);
    const run = [...s.running()].find((r) => r.step === step);
    return {
      ...stepView(step),
      outputs: step.outputs,
      deps: step.deps.map((d) => d.id),
      rdeps: step.rdeps.map((r) => r.id),
      builds: step.builds.map((b) => b.id),
      resolvedTo: step.state === 'resolved' ? (s.graph.resolvedStep(step)?.id ?? null) : null,
      machine: run?.machine ?? null,
      busyName: run ? busyName(run.busy) : null,
      waiting: step.state === 'runnable' || step.state === 'retryWait' ? s.dispatcher.waitingReason(step) : null,
      history: ctx.feed?.history(step) ?? [],
      accepts: stepLifecycle.accepts(step.state),
    };
  });

  router.get('/status/build/:id', async (req) => {
    const s = sched();
    const id = Number(req.params.id);
    if (!Number.isSafeInteger(id)) throw new HttpError(400, 'build id must be an integer');
    const b = s.graph.builds.get(id);
    const { limit } = pageOf(req.url, 20_000, 100_000);
    if (b) return buildTree(s, b, limit);
    if (!ctx.db) throw new HttpError(404, `build ${id} is not queued in this runner`);
    const h = await buildHistory(ctx.db, id, limit, STORE_DIR);
    if (!h) throw new HttpError(404, `build ${id} does not exist`);
    return h;
  });

  const sendLog = async (res: ServerResponse, drvPath: string, url: URL): Promise<void> => {
    if (ctx.hydraDataDir === undefined) throw new HttpError(404, 'this server has no build logs');
    if (!isDrvPath(drvPath, STORE_DIR)) throw new HttpError(400, 'not a derivation path');
    const log = await readLog(ctx.hydraDataDir, drvPath, rangeOf(url), ctx.caches);
    if (!log) throw new HttpError(404, `no log for ${drvPath} (yet)`);
    res.writeHead(200, {
      'content-type': 'text/plain; charset=utf-8',
      'content-length': log.text.length,
      'cache-control': 'no-store',
      'x-log-size': String(log.size),
      'x-log-offset': String(log.offset),
      'x-log-stored': log.stored,
    });
    res.end(log.text);
  };

  // A build step's log by its row (BuildSteps.build, stepnr): any attempt, finished or running.
  router.get('/status/build/:id/step/:nr/log', async (req, res) => {
    const id = intParam(req.params.id, 'build id');
    const nr = intParam(req.params.nr, 'step number');
    if (!ctx.db) throw new HttpError(404, 'this server reads no database');
    const row = await readStepDrv(ctx.db, id, nr);
    if (!row) throw new HttpError(404, `build ${id} has no step ${nr}`);
    await sendLog(res, row.drvPath, req.url);
  });

  // A queued step's log by its id in the runner's graph (the live tree's ids).
  router.get('/status/step/:id/log', async (req, res) => {
    const s = sched();
    const id = intParam(req.params.id, 'step id');
    let step: StepRecord | undefined;
    for (const x of s.graph.steps.values()) if (x.id === id) step = x;
    step ??= ctx.feed?.recentStep(id);
    if (!step) throw new HttpError(404, `step ${id} is not in the queue`);
    await sendLog(res, step.drvPath, req.url);
  });

  // A log by derivation path (`?drv=/nix/store/….drv`), as Hydra's /log/ links name it.
  router.get('/status/log', async (req, res) => {
    const drv = req.url.searchParams.get('drv');
    if (drv === null) throw new HttpError(400, 'drv is required');
    await sendLog(res, drv, req.url);
  });
}
