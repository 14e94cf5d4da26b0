import { EventEmitter } from 'node:events';
import fc from 'fast-check';
import { afterEach, describe, expect, it, vi } from 'vitest';
import { Dispatcher, type DispatcherOptions } from '../../src/actors/dispatcher.ts';
import { MachineActor } from '../../src/actors/machine-actor.ts';
import { DEFAULT_THRESHOLDS, IDLE_LOAD, type MachineFreeFn, type MachineLoad, type MachineSortFn, type MachineSpec } from '../../src/actors/machine-record.ts';
import type { JobsetRecord, StepRecord } from '../../src/actors/model.ts';
import { SchedulerStats } from '../../src/actors/scheduler-stats.ts';
import { StepGraph, type QueuedBuild } from '../../src/actors/step-graph.ts';
import type { StepSortFn } from '../../src/config/scheduling-fns.ts';
import { startRunnerRuntime } from '../../src/daemon/runner-runtime.ts';
import { PgSchedulerDb } from '../../src/db/scheduler-db.ts';
import { stepLifecycle } from '../../src/machines/index.ts';
import { useTestDatabase } from '../helpers/db.ts';
import { createJobset, queueBuild } from '../helpers/hydra-rows.ts';
import { quietLog, TEST_CONFIG, waitFor } from '../helpers/runtime.ts';
import { MemoryStore } from '../sim/memory-store.ts';

/**
 * Every scheduling option of Hydra's queue runner, each shown doing what it
 * is for: the step sorts, the machine sorts, the machine free rules with
 * their thresholds, fair share, the dispatch backstop, and the queue poll
 * backstop and re-poll after a LISTEN reconnect.
 */

function machine(id: string, spec: Partial<MachineSpec> = {}, load: MachineLoad = IDLE_LOAD): MachineActor {
  return new MachineActor(
    {
      id, systems: new Set(['x86_64-linux']), features: new Set(), mandatoryFeatures: new Set(), maxJobs: 1, speedFactor: 1,
      cpuCount: 1, bogomips: 1, thresholds: DEFAULT_THRESHOLDS, ...spec,
    },
    { load },
  );
}

function dispatcher(over: Partial<DispatcherOptions> = {}) {
  const assigned: [string, string][] = [];
  const d = new Dispatcher({
    clock: { now: () => Date.now() }, stepSortFn: 'Legacy', machineSortFn: 'SpeedFactorOnly', machineFreeFn: 'Static',
    maxRetries: 2, retryInterval: 60, retryBackoff: 2, maxUnsupportedTimeInS: 3600, random: () => 0,
    stepEvent: (s, e) => (s.state = stepLifecycle.next(s.state, e)!),
    assign: (s, m) => assigned.push([s.drvPath, m.id]),
    unsupported: () => {},
    ...over,
  });
  const add = (m: MachineActor) => {
    d.addMachine(m);
    m.send({ type: 'JOINED' });
  };
  return { d, assigned, add };
}

/** Enqueues `steps` in order, adds machine `m`, runs one round: the assignments it made. */
function oneSlotRound(over: Partial<DispatcherOptions>, ...steps: StepRecord[]): [string, string][] {
  const { d, assigned, add } = dispatcher(over);
  for (const s of steps) d.enqueue(s);
  add(machine('m'));
  d.round();
  d.close();
  return assigned;
}

let nextStep = 1;
function step(over: Partial<StepRecord> = {}): StepRecord {
  const id = nextStep++;
  return {
    id, drvPath: `/nix/store/${id}.drv`, platform: { key: 'x86_64-linux||false', system: 'x86_64-linux', features: [], preferLocal: false }, outputs: [], isCA: false,
    state: 'runnable', deps: [], rdeps: [], builds: [], refs: 1, globalPriority: 0, localPriority: 0, lowestBuildId: id, jobsets: [],
    maxSilent: 0, timeout: 0, tries: 0, retryAt: 0, runnableSince: 0, queueGen: 0, criticalPath: 0, machine: null,
    ...over,
  };
}

const jobset: JobsetRecord = { id: 1, project: 'p', name: 'j', shares: 100, seconds: 0, charges: [] };

/**
 * A real step graph over: a ← x ← y ← z (a is needed by x, x by y, y by z) and
 * b ← p, b ← q. Builds: z (id 1), p (id 2), q (id 3). Runnable leaves: a (one
 * direct dependent, a chain of three above it, lowest build id 1) and b (two
 * direct dependents, a chain of one above it, lowest build id 2).
 */
async function leavesOfGraph(): Promise<{ a: StepRecord; b: StepRecord }> {
  const store = new MemoryStore();
  const drv = (name: string, deps: string[]) => store.addTrivial(name, deps);
  const a = drv('a', []);
  const z = drv('z', [drv('y', [drv('x', [a])])]);
  const b = drv('b', []);
  const p = drv('p', [b]);
  const q = drv('q', [b]);
  const runnable = new Map<string, StepRecord>();
  const graph = new StepGraph({
    store, failures: { isFailed: async () => false }, clock: { now: () => 0 }, trackCriticalPath: true,
    listener: { runnable: (s) => runnable.set(s.drvPath, s), reprioritized: () => {}, released: () => {} },
  });
  const queued = (id: number, drvPath: string): QueuedBuild => ({ id, jobset, job: `job${id}`, drvPath, timestamp: 0, maxSilent: 0, timeout: 0, localPriority: 0, globalPriority: 0 });
  for (const [id, top] of [[1, z], [2, p], [3, q]] as const) expect((await graph.addBuild(queued(id, top))).kind).toBe('queued');
  expect([...runnable.keys()].sort()).toEqual([a, b].sort());
  return { a: runnable.get(a)!, b: runnable.get(b)! };
}

describe('scheduling options', () => {
  afterEach(() => vi.useRealTimers());

  describe('stepSortFn', () => {
    // Which of two equally urgent runnable steps a one-slot machine gets first.
    async function first(fn: StepSortFn): Promise<string> {
      const { a, b } = await leavesOfGraph();
      const assigned = oneSlotRound({ stepSortFn: fn }, b, a);
      expect(assigned).toHaveLength(1);
      return assigned[0]![0] === a.drvPath ? 'a' : 'b';
    }

    it('the graph counts direct dependents and the chain above each step', async () => {
      const { a, b } = await leavesOfGraph();
      expect([a.rdeps.length, a.criticalPath, a.lowestBuildId]).toEqual([1, 3, 1]);
      expect([b.rdeps.length, b.criticalPath, b.lowestBuildId]).toEqual([2, 1, 2]);
    });

    it('Legacy: the lowest build id first (Rust state/step_info.rs legacy_compare)', async () => {
      expect(await first('Legacy')).toBe('a');
    });

    it('WithRdeps: the step with more direct dependents first, however deep the chain above the other (Rust compare_with_rdeps on rdeps_len)', async () => {
      expect(await first('WithRdeps')).toBe('b');
    });

    it('WithRdeps counts dependent steps, not the builds a step is the top of (Rust rdeps_len grows in make_rdep only)', async () => {
      const store = new MemoryStore();
      const drv = (name: string, deps: string[]) => store.addTrivial(name, deps);
      // c is the top-level derivation of three builds and needed by no step; a is needed by one step.
      const a = drv('a', []);
      const x = drv('x', [a]);
      const c = drv('c', []);
      const runnable = new Map<string, StepRecord>();
      const graph = new StepGraph({
        store, failures: { isFailed: async () => false }, clock: { now: () => 0 },
        listener: { runnable: (st) => runnable.set(st.drvPath, st), reprioritized: () => {}, released: () => {} },
      });
      const queued = (id: number, drvPath: string): QueuedBuild => ({ id, jobset, job: `job${id}`, drvPath, timestamp: 0, maxSilent: 0, timeout: 0, localPriority: 0, globalPriority: 0 });
      // c's builds come first: by build id alone (Legacy) c would go first.
      for (const [id, top] of [[1, c], [2, c], [3, c], [4, x]] as const) await graph.addBuild(queued(id, top));
      const [sa, sc] = [runnable.get(a)!, runnable.get(c)!];
      expect([sa.rdeps.length, sc.rdeps.length, sc.builds.length]).toEqual([1, 0, 3]);
      const assigned = oneSlotRound({ stepSortFn: 'WithRdeps' }, sc, sa);
      expect(assigned).toEqual([[a, 'm']]);
    });

    it('WithCriticalPath: the step with the longest chain of dependents above it first (Rust compare_with_critical_path on cp_length)', async () => {
      expect(await first('WithCriticalPath')).toBe('a');
    });

    it('priorities and fair share still come first: a higher global priority beats more dependents', async () => {
      const { a, b } = await leavesOfGraph();
      a.globalPriority = 10;
      const assigned = oneSlotRound({ stepSortFn: 'WithRdeps' }, b, a);
      expect(assigned).toEqual([[a.drvPath, 'm']]);
    });
  });

  describe('machineSortFn', () => {
    // fast: many slow cores of high bogomips; quick: a high speed factor, few cores; big: many cores.
    const specs: Record<string, Partial<MachineSpec>> = {
      fast: { speedFactor: 1, cpuCount: 4, bogomips: 5000 },
      quick: { speedFactor: 8, cpuCount: 1, bogomips: 100 },
      big: { speedFactor: 2, cpuCount: 16, bogomips: 50 },
    };
    function chosen(fn: MachineSortFn): string {
      const { d, assigned, add } = dispatcher({ machineSortFn: fn });
      for (const [id, spec] of Object.entries(specs)) add(machine(id, spec));
      d.enqueue(step());
      d.round();
      d.close();
      return assigned[0]![1];
    }

    it('SpeedFactorOnly: the highest speed factor', () => {
      expect(chosen('SpeedFactorOnly')).toBe('quick'); // 8 > 2 > 1
    });
    it('CpuCoreCountWithSpeedFactor: speed factor × cores', () => {
      expect(chosen('CpuCoreCountWithSpeedFactor')).toBe('big'); // 32 > 8 > 4
    });
    it('BogomipsWithSpeedFactor: speed factor × bogomips × cores (Rust state/machine.rs score)', () => {
      expect(chosen('BogomipsWithSpeedFactor')).toBe('fast'); // 20000 > 1600 > 800
    });
    it('BogomipsWithSpeedFactor counts bogomips below 1 as 1', () => {
      const { d, assigned, add } = dispatcher({ machineSortFn: 'BogomipsWithSpeedFactor' });
      add(machine('unknown', { speedFactor: 3, cpuCount: 1, bogomips: 0 }));
      add(machine('slow', { speedFactor: 1, cpuCount: 1, bogomips: 2 }));
      d.enqueue(step());
      d.round();
      d.close();
      expect(assigned[0]![1]).toBe('unknown'); // 3 × 1 × 1 > 1 × 2 × 1
    });
  });

  describe('machineFreeFn', () => {
    /** How many of `n` runnable steps a machine with one job slot and this load takes. */
    function taken(fn: MachineFreeFn, load: Partial<MachineLoad>, n = 3): number {
      const { d, assigned, add } = dispatcher({ machineFreeFn: fn });
      add(machine('m', { maxJobs: 1, cpuCount: 4 }, { ...IDLE_LOAD, ...load }));
      for (let i = 0; i < n; i++) d.enqueue(step());
      d.round();
      d.close();
      return assigned.length;
    }
    // The default thresholds: load1 per core 1.5, cpu pressure 75 %, memory 50 %, io 80 %, free disk 5 %.
    const over: Record<string, Partial<MachineLoad>> = {
      load: { load1: 4 * 1.5 },
      cpuPressure: { cpuPressure: 75 },
      memPressure: { memPressure: 50 },
      ioPressure: { ioPressure: 80 },
    };
    const under: Partial<MachineLoad> = { load1: 4 * 1.5 - 0.01, cpuPressure: 74.9, memPressure: 49.9, ioPressure: 79.9, buildDirFreePercent: 5, storeFreePercent: 5 };

    it('Static: job slots only, whatever the load', () => {
      expect(taken('Static', under)).toBe(1);
      for (const l of Object.values(over)) expect(taken('Static', l)).toBe(1);
    });

    it('Dynamic: load and pressure only; job slots do not limit it', () => {
      expect(taken('Dynamic', under)).toBe(3);
      for (const [what, l] of Object.entries(over)) expect(taken('Dynamic', l), what).toBe(0);
    });

    it('DynamicWithMaxJobLimit: both', () => {
      expect(taken('DynamicWithMaxJobLimit', under)).toBe(1);
      for (const [what, l] of Object.entries(over)) expect(taken('DynamicWithMaxJobLimit', l), what).toBe(0);
    });

    it('free disk below its threshold stops every rule (Rust has_capacity checks it first)', () => {
      for (const fn of ['Static', 'Dynamic', 'DynamicWithMaxJobLimit'] as const) {
        expect(taken(fn, { buildDirFreePercent: 4.9 }), fn).toBe(0);
        expect(taken(fn, { storeFreePercent: 4.9 }), fn).toBe(0);
      }
    });

    it('Dynamic takes a job exactly when every figure is under its threshold (any load)', () => {
      fc.assert(
        fc.property(
          fc.record({ load1: fc.double({ min: 0, max: 20, noNaN: true }), cpuPressure: fc.double({ min: 0, max: 100, noNaN: true }), memPressure: fc.double({ min: 0, max: 100, noNaN: true }), ioPressure: fc.double({ min: 0, max: 100, noNaN: true }) }),
          (l) => {
            const free = l.load1 / 4 < 1.5 && l.cpuPressure < 75 && l.memPressure < 50 && l.ioPressure < 80;
            expect(taken('Dynamic', l, 2)).toBe(free ? 2 : 0);
          },
        ),
        { numRuns: 200 },
      );
    });

    it('a load report that falls under the thresholds gives the machine work again', async () => {
      const { d, assigned, add } = dispatcher({ machineFreeFn: 'Dynamic' });
      const m = machine('m', { cpuCount: 4 }, { ...IDLE_LOAD, cpuPressure: 90 });
      add(m);
      d.enqueue(step());
      d.round();
      expect(assigned).toHaveLength(0);
      m.send({ type: 'REPORTED', at: Date.now(), load: IDLE_LOAD });
      await waitFor(() => assigned.length === 1, 5000, 'the report to dispatch');
      d.close();
    });
  });

  describe('fair share', () => {
    it("divides a step's build time among the jobsets that need it, in whole seconds (C++ builder.cc:236-245)", () => {
      fc.assert(
        fc.property(fc.integer({ min: 1, max: 6 }), fc.integer({ min: 0, max: 100_000 }), (n, seconds) => {
          const stats = new SchedulerStats();
          const jobsets = Array.from({ length: n }, (_, i) => stats.jobset({ jobsetId: i + 1, project: 'p', jobset: `j${i}` }));
          stats.stepDone({ jobsets } as unknown as StepRecord, 'm', 0, { kind: 'failure', status: 1, errorMsg: '', startTime: 1000, stopTime: 1000 + seconds, logFile: '' }, 1);
          for (const j of jobsets) expect(j.seconds).toBe(Math.floor(seconds / n));
          // Never more than the step took, in all.
          expect(jobsets.reduce((t, j) => t + j.seconds, 0)).toBeLessThanOrEqual(seconds);
        }),
      );
    });

    it('a jobset sharing its steps with another is charged less, so it is served before one that built alone', () => {
      const stats = new SchedulerStats();
      const shared1 = stats.jobset({ jobsetId: 1, project: 'p', jobset: 'shared1' });
      const shared2 = stats.jobset({ jobsetId: 2, project: 'p', jobset: 'shared2' });
      const alone = stats.jobset({ jobsetId: 3, project: 'p', jobset: 'alone' });
      const done = (jobsets: JobsetRecord[], s: number) =>
        stats.stepDone({ jobsets } as unknown as StepRecord, 'm', 0, { kind: 'failure', status: 1, errorMsg: '', startTime: 0, stopTime: s, logFile: '' }, 1);
      done([shared1, shared2], 100);
      done([alone], 60);
      expect([shared1.seconds, shared2.seconds, alone.seconds]).toEqual([50, 50, 60]);
      const fromAlone = step({ jobsets: [alone], lowestBuildId: 1 });
      const fromShared = step({ jobsets: [shared1], lowestBuildId: 2 });
      expect(oneSlotRound({}, fromAlone, fromShared)).toEqual([[fromShared.drvPath, 'm']]);
    });
  });

  describe('dispatchTriggerTimerInS', () => {
    it('runs a dispatch round every so many seconds without any event; 0 runs none', async () => {
      vi.useFakeTimers({ now: 1_700_000_000_000 });
      const on = dispatcher({ dispatchTriggerTimerInS: 5 }).d;
      const off = dispatcher({ dispatchTriggerTimerInS: 0 }).d;
      await vi.advanceTimersByTimeAsync(0);
      const [r0, o0] = [on.stats.rounds, off.stats.rounds];
      await vi.advanceTimersByTimeAsync(4_999);
      expect(on.stats.rounds).toBe(r0);
      await vi.advanceTimersByTimeAsync(1);
      expect(on.stats.rounds).toBe(r0 + 1);
      await vi.advanceTimersByTimeAsync(10_000);
      expect(on.stats.rounds).toBe(r0 + 3);
      expect(off.stats.rounds).toBe(o0);
      on.close();
      off.close();
      // Closed: no more rounds.
      await vi.advanceTimersByTimeAsync(10_000);
      expect(on.stats.rounds).toBe(r0 + 3);
    });
  });

  describe('queueTriggerTimerInS and the LISTEN reconnect (real PostgreSQL)', () => {
    const db = useTestDatabase();
    const store = new MemoryStore();
    let n = 0;
    /** A build row queued without NOTIFY, as if its notification was lost. */
    async function silentlyQueued(jobsetId: number): Promise<number> {
      const name = `q${++n}`; // hash parts are Nix base32 (no e, o, u, t)
      const drvPath = `/nix/store/${name.padStart(32, 'c')}-${name}.drv`;
      store.add({ drvPath, system: 'x86_64-linux', requiredFeatures: [], preferLocalBuild: false, outputs: [{ name: 'out', path: `/nix/store/${name.padStart(32, 'd')}-${name}` }], inputDrvs: new Map(), isCA: false });
      return queueBuild(db.pool, jobsetId, drvPath, name);
    }
    async function runtime(queueTriggerTimerInS: number) {
      // The listener stands in for the LISTEN connection: it delivers nothing unless told.
      const listener = new EventEmitter();
      // No machines: loaded builds stay queued (not failed as unsupported).
      const rt = await startRunnerRuntime({ config: { ...TEST_CONFIG, maxUnsupportedTimeInS: 3600, queueTriggerTimerInS }, db: new PgSchedulerDb(db.pool), store, listener, log: quietLog });
      await rt.initialLoad;
      return { rt, listener };
    }

    it('the poll timer loads a build whose notification never came', async () => {
      const jobsetId = await createJobset(db.pool, 'poll', 'main');
      const { rt } = await runtime(1);
      try {
        const id = await silentlyQueued(jobsetId);
        const wakeups = rt.scheduler.counters.queueWakeups;
        await waitFor(() => rt.scheduler.hasBuild(id), 10_000, 'the poll to load the build');
        expect(rt.scheduler.counters.queueWakeups).toBeGreaterThan(wakeups);
      } finally {
        await rt.stop(0);
      }
    });

    it('without the poll (-1), a reconnect of the LISTEN connection re-reads the queue', async () => {
      const jobsetId = await createJobset(db.pool, 'reconnect', 'main');
      const { rt, listener } = await runtime(-1);
      try {
        const id = await silentlyQueued(jobsetId);
        // A pass that reads no builds (jobset shares) settles before the reconnect: the build is still unknown.
        await rt.monitor.request('shares');
        expect(rt.scheduler.hasBuild(id)).toBe(false);
        listener.emit('reconnected');
        await waitFor(() => rt.scheduler.hasBuild(id), 10_000, 'the re-poll after the reconnect');
      } finally {
        await rt.stop(0);
      }
    });
  });
});
