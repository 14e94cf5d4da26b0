/**
 * Dispatch core benchmark: the runner's queue monitor, scheduler, step graph
 * and dispatcher in one process over an in-memory database (bench/null-db.ts)
 * and simulated builders, so what is measured is the runner's own CPU per
 * assignment and its dispatch latency, without PostgreSQL. Prints one JSON
 * object. Modes: steady dispatch of a synthetic nixpkgs-shaped queue (the
 * default), `--cold-start` (machines present from the start: how long until
 * the first assignment while the queue is still loading) and `--burst N`
 * (N steps and N free slots at once).
 */
import { EventEmitter } from 'node:events';
import { writeFileSync } from 'node:fs';
import { Session } from 'node:inspector';
import { PerformanceObserver } from 'node:perf_hooks';
import { getHeapStatistics } from 'node:v8';
import type { DerivationSummary } from '../src/actors/model.ts';
import { startRunnerRuntime, type RunnerRuntime } from '../src/daemon/runner-runtime.ts';
import { MemoryStore } from '../test/sim/memory-store.ts';
import { SimulatedBuilder } from '../test/sim/simulated-builder.ts';
import { syntheticDag } from '../test/sim/synthetic-dag.ts';
import { createLogger } from '../src/util/logger.ts';
import { simMachine } from './sim-fleet.ts';
import { benchOptions, log, round } from './common.ts';
import { NullDb } from './null-db.ts';

export const describe = 'dispatcher and step graph in process (no database): CPU per assignment, latency, cold start, bursts';

/**
 * Reads a derivation as the runner's store does, off the main thread: every
 * read resolves on a later turn of the event loop (a MemoryStore alone would
 * resolve them all in microtasks and load the whole queue without ever
 * letting a timer or a round of I/O run).
 */
class YieldingStore extends MemoryStore {
  override async readDerivation(drvPath: string): Promise<DerivationSummary> {
    await new Promise((r) => setImmediate(r));
    return super.readDerivation(drvPath);
  }
}

function percentile(sorted: Float64Array, p: number): number {
  if (sorted.length === 0) return 0;
  return sorted[Math.min(sorted.length - 1, Math.floor(p * sorted.length))]!;
}

function latencySummary(xs: number[]): { p50: number; p99: number; max: number; samples: number } {
  const s = Float64Array.from(xs).sort();
  return { p50: round(percentile(s, 0.5), 3), p99: round(percentile(s, 0.99), 3), max: round(s[s.length - 1] ?? 0, 3), samples: s.length };
}

/** A store hash (Nix base32) numbered `i`, distinct for drv and output. */
function hashPart(i: number, kind: 'd' | 'o'): string {
  const B32 = '0123456789abcdfghijklmnpqrsvwxyz';
  let s = '';
  for (let x = i; x > 0; x = Math.floor(x / 32)) s = B32[x % 32] + s;
  return (kind === 'd' ? 'd' : 'f') + s.padStart(31, '0');
}

/** A root every one of `n` leaves depends on; the leaves are the builds. */
function burstDag(n: number): { derivations: DerivationSummary[]; builds: string[] } {
  let next = 0;
  const drv = (name: string, deps: string[]): DerivationSummary => ({
    drvPath: `/nix/store/${hashPart(next, 'd')}-${name}.drv`,
    system: 'x86_64-linux',
    requiredFeatures: [],
    preferLocalBuild: false,
    outputs: [{ name: 'out', path: `/nix/store/${hashPart(next++, 'o')}-${name}` }],
    inputDrvs: new Map(deps.map((d) => [d, ['out']])),
    isCA: false,
  });
  const root = drv('root', []);
  const leaves = Array.from({ length: n }, (_, i) => drv(`leaf${i}`, [root.drvPath]));
  return { derivations: [root, ...leaves], builds: leaves.map((l) => l.drvPath) };
}

interface Probe {
  latencies: number[];
  waits: number[];
  rounds: number[];
  assigned: number[];
  firstDispatchAt: number;
  /** Burst: when the root's result reached the graph (wall ms, process CPU), and wall times of every assignment. */
  rootAt: number;
  rootCpu: NodeJS.CpuUsage | null;
  dispatchedAt: number[];
  lastCpu: NodeJS.CpuUsage | null;
  /** V8 heap in use when the root's result arrived and at the burst's last hand-over. */
  rootHeap: number;
  lastHeap: number;
}

/**
 * A profile of the burst alone (`--profile-burst FILE`): from the root's
 * result reaching the graph to the last hand-over, without the ingest and
 * the stop around it (which `node --cpu-prof` would mix in). A FILE ending
 * in `.heapprofile` gets the sampling heap profiler's allocations (every
 * ~128 bytes sampled), any other a CPU profile (100 µs samples).
 */
function burstProfiler(file: string | undefined): { start(): void; stop(): void } {
  if (!file) return { start() {}, stop() {} };
  const session = new Session();
  session.connect();
  const heap = file.endsWith('.heapprofile');
  // An in-thread session answers synchronously: the profile covers exactly the calls between start and stop.
  const done = (err: Error | null, r: { profile: object }) => {
    if (!err) writeFileSync(file, JSON.stringify(r.profile));
    session.disconnect();
  };
  if (heap) {
    return {
      start: () => session.post('HeapProfiler.startSampling', { samplingInterval: 128, includeObjectsCollectedByMajorGC: true, includeObjectsCollectedByMinorGC: true } as object),
      stop: () => session.post('HeapProfiler.stopSampling', done),
    };
  }
  session.post('Profiler.enable');
  session.post('Profiler.setSamplingInterval', { interval: 100 });
  return {
    start: () => session.post('Profiler.start'),
    stop: () => session.post('Profiler.stop', done),
  };
}

/** Times every round (synchronous, so wall time is main-thread CPU) and records every assignment's latency. */
function probe(runtime: RunnerRuntime, burstTotal: number, profiler: ReturnType<typeof burstProfiler>): Probe {
  const p: Probe = { latencies: [], waits: [], rounds: [], assigned: [], firstDispatchAt: 0, rootAt: 0, rootCpu: null, dispatchedAt: [], lastCpu: null, rootHeap: 0, lastHeap: 0 };
  const d = runtime.scheduler.dispatcher;
  const original = d.round.bind(d);
  d.round = () => {
    const before = d.stats.assignments;
    const t = performance.now();
    original();
    p.rounds.push(performance.now() - t);
    p.assigned.push(d.stats.assignments - before);
  };
  (d as unknown as { o: { onDispatch?: (l: number, w: number) => void } }).o.onDispatch = (l, w) => {
    const now = performance.now();
    if (p.firstDispatchAt === 0) p.firstDispatchAt = now;
    p.latencies.push(l);
    p.waits.push(w);
    p.dispatchedAt.push(now);
    // One getrusage at the burst's end only: per assignment or per round it cost 20–40 µs on a loaded machine.
    if (p.rootCpu && p.dispatchedAt.length === burstTotal) {
      p.lastCpu = process.cpuUsage(p.rootCpu);
      p.lastHeap = getHeapStatistics().used_heap_size;
      profiler.stop();
    }
  };
  const g = runtime.scheduler.graph;
  const complete = g.completeSuccess.bind(g);
  g.completeSuccess = (step) => {
    if (p.rootAt === 0) {
      p.rootAt = performance.now();
      p.rootCpu = process.cpuUsage();
      p.rootHeap = getHeapStatistics().used_heap_size;
      profiler.start();
    }
    return complete(step);
  };
  return p;
}

function addMachines(runtime: RunnerRuntime, sim: SimulatedBuilder, machines: number, jobs: number): void {
  for (let m = 0; m < machines; m++) {
    runtime.scheduler.addMachine(
      simMachine(m, jobs, 1 + (m % 3)),
      sim,
    );
  }
}

/** A garbage collection: when it began, its pause, its kind (perf_hooks constants.NODE_PERFORMANCE_GC_*: 1 minor, 4 major, 8 incremental, 16 weak callbacks). */
interface Gc {
  start: number;
  ms: number;
  kind: number;
}

/** Garbage collections that began within the burst, their total pause, and the pause of the major ones. */
function burstGcs(gcs: Gc[], from: number, to: number): { count: number; ms: number; majorMs: number } {
  const inside = gcs.filter((g) => g.start >= from && g.start <= to);
  const sum = (xs: Gc[]) => round(xs.reduce((a, g) => a + g.ms, 0), 1);
  return { count: inside.length, ms: sum(inside), majorMs: sum(inside.filter((g) => g.kind === 4)) };
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** The event loop's responsiveness: gaps between the ticks of a 1 ms timer (a gap is the longest callback in it, plus 1 ms). */
function loopMonitor(): { enable(): void; disable(): void; summary(): { p99: number; max: number } } {
  const gaps: number[] = [];
  let timer: NodeJS.Timeout | null = null;
  let last = 0;
  return {
    enable() {
      last = performance.now();
      timer = setInterval(() => {
        const now = performance.now();
        gaps.push(now - last);
        last = now;
      }, 1);
    },
    disable() {
      if (timer) clearInterval(timer);
    },
    summary() {
      const s = latencySummary(gaps);
      return { p99: s.p99, max: s.max };
    },
  };
}

export async function run(argv: string[]): Promise<Record<string, unknown>> {
  const values = benchOptions(argv, {
    steps: 100000, machines: 1000, 'jobs-per-machine': 4, seconds: 10, seed: 1, 'cold-start': false, burst: 0, 'profile-burst': null,
    /** `none`: the dispatcher's hand-over does nothing (except the burst's root): what the decision alone costs. */
    handover: 'real',
  });
  const { machines, seconds } = values;
  const jobs = values['jobs-per-machine'];
  const burst = values.burst;
  const dag = burst > 0 ? burstDag(burst) : syntheticDag({ steps: values.steps, seed: values.seed });
  const store = new YieldingStore();
  for (const d of dag.derivations) store.add(d);
  const db = new NullDb(dag.builds);
  log(`${dag.derivations.length} derivations, ${dag.builds.length} builds`);
  const config = {
    stepSortFn: 'Legacy' as const, machineSortFn: 'SpeedFactorOnly' as const, machineFreeFn: 'Static' as const,
    maxRetries: 5, retryInterval: 60, retryBackoff: 3, maxUnsupportedTimeInS: 120, maxLogSize: 64 << 20,
    maxOutputSize: 2 ** 31, maxSilentTime: 3600, buildTimeout: 36000, queueTriggerTimerInS: -1,
  };
  // In a burst the leaves never end, so their slots stay taken and each assignment is counted once.
  const root = dag.derivations[0]!.drvPath;
  const sim = new SimulatedBuilder({ store, behaviour: (job) => (burst > 0 && job.drvPath !== root ? { kind: 'hang' } : { kind: 'success' }) });
  const loop = loopMonitor();
  // Garbage collections, to tell whether the heap's growth over the burst is what it allocated (none ran) or less.
  const gcs: Gc[] = [];
  const gcObserver = new PerformanceObserver((list) => {
    for (const e of list.getEntries()) gcs.push({ start: e.startTime, ms: e.duration, kind: (e as { detail?: { kind?: number } }).detail?.kind ?? 0 });
  });
  gcObserver.observe({ entryTypes: ['gc'] });

  const t0 = performance.now();
  const cpu0 = process.cpuUsage();
  const runtime = await startRunnerRuntime({ config, db, store, listener: new EventEmitter(), log: createLogger({ level: 'warn' }) });
  const p = probe(runtime, burst + 1, burstProfiler(values['profile-burst']));
  if (values.handover === 'none') {
    // The scheduling decision alone (queues, machine pick, the step's DISPATCH event): the floor under an assignment.
    const o = (runtime.scheduler.dispatcher as unknown as { o: { assign(s: { drvPath: string }, m: unknown, now: number): void } }).o;
    const assign = o.assign.bind(o);
    o.assign = (s, m, now) => {
      if (s.drvPath === root) assign(s, m, now);
    };
  } else if (values.handover !== 'real') throw new Error(`--handover must be real or none, not ${values.handover}`);
  const cold = values['cold-start'];
  if (cold) {
    // A restart: the fleet is there (builders reconnect at once) while the queue loads.
    addMachines(runtime, sim, machines, jobs);
    loop.enable();
  }
  await runtime.initialLoad;
  const ingestSeconds = (performance.now() - t0) / 1000;
  const graph = runtime.scheduler.graph;
  log(`loaded ${graph.builds.size} builds, ${graph.steps.size} steps in ${round(ingestSeconds, 2)} s`);

  // A cold start dispatches while it loads: its figures count from the start.
  const start = cold ? t0 : performance.now();
  const cpuStart = cold ? cpu0 : process.cpuUsage();
  if (!cold) {
    addMachines(runtime, sim, machines, jobs);
    loop.enable();
  }
  const deadline = start + seconds * 1000;
  const d = runtime.scheduler.dispatcher;
  const done = () => (burst > 0 ? d.stats.assignments >= burst + 1 : graph.builds.size === 0);
  while (!done() && performance.now() < deadline) await sleep(10);
  const elapsed = (performance.now() - start) / 1000;
  const cpu = process.cpuUsage(cpuStart);
  loop.disable();
  await sleep(0); // the last GC entries are delivered asynchronously
  gcObserver.disconnect();
  const finished = runtime.scheduler.counters.stepsFinished;
  await runtime.stop(0);

  const roundMs = p.rounds.reduce((a, b) => a + b, 0);
  const assignments = p.assigned.reduce((a, b) => a + b, 0);
  const busy = p.rounds.filter((_, i) => p.assigned[i]! > 0);
  return {
    mode: burst > 0 ? 'burst' : cold ? 'cold-start' : 'steady',
    steps: burst > 0 ? burst + 1 : dag.derivations.length,
    builds: dag.builds.length,
    machines,
    slots: machines * jobs,
    ingestSeconds: round(ingestSeconds, 2),
    ...(cold && { firstDispatchSeconds: round((p.firstDispatchAt - t0) / 1000, 3) }),
    assignments,
    // Burst: the root's own assignment is not part of it.
    dispatchLatencyMs: latencySummary(burst > 0 ? p.latencies.slice(1) : p.latencies),
    queueWaitMsP50: latencySummary(p.waits).p50,
    roundUsPerAssignment: round((roundMs * 1000) / Math.max(1, assignments), 2),
    ...(burst > 0 && {
      // From the root's result reaching the graph: the wait of each of the N steps, and the whole burst's wall and CPU time.
      sinceRootDoneMs: latencySummary(p.dispatchedAt.slice(1).map((t) => t - p.rootAt)),
      burstMs: round((p.dispatchedAt.at(-1) ?? 0) - p.rootAt, 1),
      burstCpuUsPerAssignment: p.lastCpu ? round((p.lastCpu.user + p.lastCpu.system) / burst, 2) : null,
      // The V8 heap's growth over the burst per assignment: what it allocated when burstGc.count is 0
      // (run with --max-semi-space-size=256 so that no scavenge falls in it), a floor otherwise.
      burstHeapBytesPerAssignment: round((p.lastHeap - p.rootHeap) / burst, 0),
      burstGc: burstGcs(gcs, p.rootAt, p.dispatchedAt.at(-1) ?? 0),
    }),
    rounds: p.rounds.length,
    roundMsMax: round(busy.reduce((a, b) => Math.max(a, b), 0), 3),
    eventLoopGapMs: loop.summary(),
    stepResults: finished,
    // The whole runner path per step (result applied, graph updated, dispatch, hand-over), no database.
    cpuUsPerStepResult: finished > 0 ? round((cpu.user + cpu.system) / finished, 1) : null,
    seconds: round(elapsed, 2),
    finishedAll: done(),
  };
}
