/**
 * Dispatch benchmark: a synthetic nixpkgs-shaped DAG queued as Hydra Builds
 * rows in a real (embedded) PostgreSQL, loaded by the queue monitor, and
 * dispatched to simulated builders. Prints one JSON object.
 */
import { EventEmitter } from 'node:events';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { DerivationSummary } from '../src/actors/model.ts';
import { startRunnerRuntime } from '../src/daemon/runner-runtime.ts';
import { startEmbeddedPostgres } from '../src/db/embedded.ts';
import { createPool } from '../src/db/pool.ts';
import { PgSchedulerDb } from '../src/db/scheduler-db.ts';
import { ensureSchema } from '../src/db/schema.ts';
import { MemoryStore } from '../test/sim/memory-store.ts';
import { SimulatedBuilder } from '../test/sim/simulated-builder.ts';
import { syntheticDag } from '../test/sim/synthetic-dag.ts';
import { LiveFeed } from '../src/status/live-feed.ts';
import { createLogger } from '../src/util/logger.ts';
import { simMachine, settledRss } from './sim-fleet.ts';
import { benchOptions, log, round } from './common.ts';

export const describe = 'ingest and dispatch a synthetic nixpkgs-shaped queue with simulated builders';

function percentile(sorted: Float64Array, p: number): number {
  if (sorted.length === 0) return 0;
  return sorted[Math.min(sorted.length - 1, Math.floor(p * sorted.length))]!;
}

/** Each read returns a fresh copy, as parsing a .drv would, so the runner's memory is counted fairly. */
class CopyingStore extends MemoryStore {
  override async readDerivation(drvPath: string): Promise<DerivationSummary> {
    const d = await super.readDerivation(drvPath);
    return { ...d, outputs: d.outputs.map((o) => ({ ...o })), inputDrvs: new Map(d.inputDrvs), requiredFeatures: [...d.requiredFeatures] };
  }
}

export async function run(argv: string[]): Promise<Record<string, unknown>> {
  const values = benchOptions(argv, { steps: 10000, machines: 10, 'jobs-per-machine': 4, 'build-ms': 0, seconds: 30, seed: 1, feed: false, 'cold-start': false });
  const { steps, machines, seconds } = values;
  const jobsPerMachine = values['jobs-per-machine'];
  const buildMs = values['build-ms'];

  const dir = mkdtempSync(join(tmpdir(), 'hydrant-bench-dispatch-'));
  const pg = await startEmbeddedPostgres({ stateDir: dir, ephemeral: true });
  const pool = createPool(pg.url, { max: 16 });
  try {
    await ensureSchema(pool);
    log(`generating ${steps} steps`);
    const dag = syntheticDag({ steps, seed: values.seed });
    const store = new CopyingStore();
    for (const d of dag.derivations) store.add(d);
    await pool.query("insert into users (username, emailaddress, password) values ('bench', 'b@x', '!')");
    await pool.query("insert into projects (name, displayname, owner) values ('nixpkgs', 'nixpkgs', 'bench')");
    const js = await pool.query("insert into jobsets (name, project, emailoverride, nixexprinput, nixexprpath) values ('trunk', 'nixpkgs', '', 'src', 'release.nix') returning id");
    const jobset = js.rows[0].id as number;
    await pool.query(
      `insert into builds (finished, timestamp, jobset_id, job, drvpath, system)
       select 0, 0, $1, 'job' || ord, d, 'x86_64-linux' from unnest($2::text[]) with ordinality as t(d, ord)`,
      [jobset, dag.builds],
    );
    log(`queued ${dag.builds.length} builds needing ${dag.derivations.length} derivations`);

    // The machines join once the queue is loaded: a load longer than maxUnsupportedTimeInS (a loaded
    // machine, 300k steps) would otherwise fail the bootstrap chain as unsupported before any joined.
    const config = {
      stepSortFn: 'Legacy' as const, machineSortFn: 'SpeedFactorOnly' as const, machineFreeFn: 'Static' as const,
      maxRetries: 5, retryInterval: 60, retryBackoff: 3, maxUnsupportedTimeInS: 3600, maxLogSize: 64 << 20,
      maxOutputSize: 2 ** 31, maxSilentTime: 3600, buildTimeout: 36000, queueTriggerTimerInS: -1,
    };
    const rssBefore = settledRss();
    const heapBefore = process.memoryUsage().heapUsed;
    const t0 = performance.now();
    const runtime = await startRunnerRuntime({ config, db: new PgSchedulerDb(pool), store, listener: new EventEmitter(), log: createLogger({ level: 'warn' }) });
    const sim = new SimulatedBuilder({ store, durationMs: () => buildMs });
    // --cold-start: a restart with the fleet reconnecting at once; how long until the first assignment while the queue loads.
    let firstDispatchAt = 0;
    const cold = values['cold-start'];
    if (cold) {
      const o = (runtime.scheduler.dispatcher as unknown as { o: { onDispatch?: (l: number, w: number) => void } }).o;
      o.onDispatch = () => {
        if (firstDispatchAt === 0) firstDispatchAt = performance.now();
      };
      addMachines();
    }
    await runtime.initialLoad;
    const ingestSeconds = (performance.now() - t0) / 1000;
    const graph = runtime.scheduler.graph;
    const held = graph.steps.size;
    const rssAfter = settledRss();
    const heapAfter = process.memoryUsage().heapUsed;
    log(`ingested ${graph.builds.size} builds, ${held} steps in ${round(ingestSeconds, 2)} s`);

    // --feed: one visualizer client, as GET /events?build=ID subscribes it, watching the build
    // that needs the most steps; its events are serialised as the HTTP route would write them.
    const feedStats = { watchedSteps: 0, events: 0, bytes: 0, cpuMs: 0 };
    let feed: LiveFeed | null = null;
    let unsubscribe = (): void => {};
    if (values.feed) {
      let watched = new Set<number>();
      for (const b of graph.builds.values()) {
        const steps = new Set<number>();
        const stack = b.toplevel ? [b.toplevel] : [];
        while (stack.length > 0) {
          const step = stack.pop()!;
          if (steps.has(step.id)) continue;
          steps.add(step.id);
          for (const dep of step.deps) stack.push(dep);
        }
        if (steps.size > watched.size) watched = steps;
      }
      feedStats.watchedSteps = watched.size;
      feed = new LiveFeed(() => runtime.scheduler);
      unsubscribe = feed.subscribe({
        steps: watched,
        send: (event, data) => {
          feedStats.events++;
          feedStats.bytes += `event: ${event}\ndata: ${JSON.stringify(data)}\n\n`.length;
        },
      });
      // The feed's own main-thread time: its step observer and its flushes (which serialise); machine transitions are few.
      const g = runtime.scheduler.graph;
      const stepObserver = g.observer!;
      const f = feed as unknown as { flush(): void };
      const flush = f.flush.bind(feed);
      const timed = <A extends unknown[]>(fn: (...a: A) => void) => (...a: A): void => {
        const t = performance.now();
        fn(...a);
        feedStats.cpuMs += performance.now() - t;
      };
      g.observer = timed(stepObserver);
      f.flush = timed(flush);
      log(`feed: one client watching a build of ${watched.size} steps`);
    }

    // Dispatch: measure the dispatcher's own latency and cost on a saturated fleet.
    const latencies: number[] = [];
    const waits: number[] = [];
    const d = runtime.scheduler.dispatcher;
    const rounds: number[] = [];
    const assignmentsInRounds: number[] = [];
    const originalRound = d.round.bind(d);
    d.round = () => {
      // A round is synchronous, so its wall time is main-thread CPU time.
      const before = d.stats.assignments;
      const t = performance.now();
      originalRound();
      rounds.push(performance.now() - t);
      assignmentsInRounds.push(d.stats.assignments - before);
    };
    (d as unknown as { o: { onDispatch?: (l: number, w: number) => void } }).o.onDispatch = (l, w) => {
      if (firstDispatchAt === 0) firstDispatchAt = performance.now();
      latencies.push(l);
      waits.push(w);
    };
    const start = performance.now();
    const cpuStart = process.cpuUsage();
    if (!cold) addMachines();
    function addMachines(): void {
      for (let m = 0; m < machines; m++) {
        runtime.scheduler.addMachine(
          simMachine(m, jobsPerMachine, 1 + (m % 3)),
          sim,
        );
      }
    }
    const deadline = start + seconds * 1000;
    while (runtime.scheduler.graph.builds.size > 0 && performance.now() < deadline) await new Promise((r) => setTimeout(r, 50));
    const elapsed = (performance.now() - start) / 1000;
    const cpu = process.cpuUsage(cpuStart);
    const finished = runtime.scheduler.counters.stepsFinished;
    unsubscribe();
    await runtime.stop(0);
    // Results are written behind the dispatcher; count what reached the database.
    const persistedSeconds = (performance.now() - start) / 1000;
    const persisted = (await pool.query('select count(*)::int n from buildsteps where status = 0')).rows[0].n as number;

    const lat = Float64Array.from(latencies).sort();
    const roundCpu = rounds.reduce((a, b) => a + b, 0);
    const assigned = assignmentsInRounds.reduce((a, b) => a + b, 0);
    // "Saturated" rounds: the ones that found work for freed slots while a backlog remained.
    const busyRounds = rounds.filter((_, i) => assignmentsInRounds[i]! > 0);
    return {
      steps: held,
      builds: dag.builds.length,
      machines,
      slots: machines * jobsPerMachine,
      ingestSeconds: round(ingestSeconds, 2),
      ...(cold && { firstDispatchSeconds: round((firstDispatchAt - t0) / 1000, 3) }),
      rssBytesPerStep: Math.round((rssAfter - rssBefore) / held),
      heapBytesPerStep: Math.round((heapAfter - heapBefore) / held),
      dispatchLatencyMs: { p50: round(percentile(lat, 0.5), 3), p99: round(percentile(lat, 0.99), 3), max: round(lat[lat.length - 1] ?? 0, 3), samples: lat.length },
      queueWaitMsP50: round(percentile(Float64Array.from(waits).sort(), 0.5), 1),
      assignmentsPerSecond: Math.round(assigned / (roundCpu / 1000)),
      cpuMsPerRoundSaturated: round(busyRounds.reduce((a, b) => a + b, 0) / Math.max(1, busyRounds.length), 3),
      rounds: rounds.length,
      stepResults: finished,
      stepResultsPerSecond: Math.round(finished / elapsed),
      stepsPersisted: persisted,
      persistedStepsPerSecond: Math.round(persisted / persistedSeconds),
      dispatchSeconds: round(elapsed, 1),
      // The runner process's CPU time (all its threads; PostgreSQL not included) while dispatching.
      dispatchCpuSeconds: round((cpu.user + cpu.system) / 1e6, 2),
      cpuMsPerStepResult: round((cpu.user + cpu.system) / 1000 / Math.max(1, finished), 3),
      finishedAll: runtime.scheduler.graph.builds.size === 0,
      ...(feed && {
        feed: {
          ...feedStats,
          cpuMs: round(feedStats.cpuMs, 1),
          transitions: feed.stats.transitions,
          flushes: feed.stats.flushes,
          stepEvents: feed.stats.stepEvents,
          usPerTransition: round((feedStats.cpuMs * 1000) / Math.max(1, feed.stats.transitions), 2),
          shareOfDispatchCpu: round(feedStats.cpuMs / Math.max(1, (cpu.user + cpu.system) / 1000), 4),
        },
      }),
    };
  } finally {
    await pool.end();
    await pg.stop();
    rmSync(dir, { recursive: true, force: true });
  }
}
