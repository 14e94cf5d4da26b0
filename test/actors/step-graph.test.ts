import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import type { JobsetRecord, StepRecord } from '../../src/actors/model.ts';
import { RUNNABLE_SLICE, StepGraph, type QueuedBuild } from '../../src/actors/step-graph.ts';
import { MemoryStore } from '../sim/memory-store.ts';
import { dagArbitrary } from './arbitraries.ts';

const jobset: JobsetRecord = { id: 1, project: 'p', name: 'j', shares: 100, seconds: 0, charges: [] };

/** Adds a one-output derivation needing `deps` to `store`; returns its .drv path. */
function adder(store: MemoryStore): (name: string, deps: string[]) => string {
  return (name, deps) => {
    const d = { drvPath: `/nix/store/${name.padStart(32, 'a')}-${name}.drv`, system: 'x86_64-linux', requiredFeatures: [], preferLocalBuild: false, outputs: [{ name: 'out', path: `/nix/store/${name.padStart(32, 'b')}-${name}` }], inputDrvs: new Map(deps.map((x) => [x, ['out']])), isCA: false };
    store.add(d);
    return d.drvPath;
  };
}

function queued(id: number, drvPath: string, globalPriority = 0): QueuedBuild {
  return { id, jobset, job: `job${id}`, drvPath, timestamp: 0, maxSilent: 3600, timeout: 36000, localPriority: 0, globalPriority };
}

describe('StepGraph', () => {
  it('makes the dependents of a step many need runnable a slice per turn of the event loop, skipping one cancelled meanwhile', async () => {
    const store = new MemoryStore();
    const add = adder(store);
    const root = add('root', []);
    const n = 2 * RUNNABLE_SLICE + 10;
    const leaves = Array.from({ length: n }, (_, i) => add(`leaf${i}`, [root]));
    const runnable: StepRecord[] = [];
    const graph = new StepGraph({
      store,
      failures: { isFailed: async () => false },
      clock: { now: () => 1 },
      listener: { runnable: (s) => runnable.push(s), reprioritized: () => {}, released: () => {} },
    });
    const builds = [];
    for (let i = 0; i < n; i++) {
      const r = await graph.addBuild(queued(i + 1, leaves[i]!));
      if (r.kind === 'queued') builds.push(r.build);
    }
    const rootStep = graph.steps.get(root)!;
    runnable.length = 0;
    for (const e of ['DISPATCH', 'START', 'SUCCEED'] as const) graph.transition(rootStep, e);
    graph.completeSuccess(rootStep);
    // The first slice at once, in the same callback.
    expect(runnable.length).toBe(RUNNABLE_SLICE);
    const pending = builds.filter((b) => b.toplevel!.state === 'queued');
    expect(pending.length).toBe(n - RUNNABLE_SLICE);
    expect(pending.every((b) => b.toplevel!.deps.length === 0)).toBe(true);
    // One build of a waiting step is cancelled before its turn.
    const cancelled = pending[0]!.toplevel!;
    graph.removeBuild(pending[0]!);
    expect(cancelled.state).toBe('cancelled');
    await new Promise((r) => setImmediate(r));
    expect(runnable.length).toBe(2 * RUNNABLE_SLICE - 1);
    await new Promise((r) => setImmediate(r));
    expect(runnable.length).toBe(n - 1);
    expect(new Set(runnable).size).toBe(n - 1);
    expect(runnable).not.toContain(cancelled);
    expect(builds.filter((b) => !b.done).every((b) => b.toplevel!.state === 'runnable')).toBe(true);
  });

  it('on random DAGs: steps become runnable only after their dependencies, every build ends once, and all references are released', async () => {
    await fc.assert(
      fc.asyncProperty(dagArbitrary({ maxNodes: 30 }), fc.array(fc.double({ min: 0, max: 1, maxExcluded: true, noNaN: true }), { minLength: 200, maxLength: 200 }), async (dag, coins) => {
        let coin = 0;
        const flip = () => coins[coin++ % coins.length]!;
        const runnable = new Set<StepRecord>();
        const released = new Set<StepRecord>();
        const succeeded = new Set<string>();
        const graph = new StepGraph({
          store: dag.store,
          failures: { isFailed: async () => false },
          clock: { now: () => 0 },
          listener: {
            runnable: (s) => {
              // Announced only with a build's priorities on it.
              expect(s.lowestBuildId).toBeLessThan(Number.MAX_SAFE_INTEGER);
              expect(s.jobsets.length).toBeGreaterThan(0);
              // Every input is built already: valid in the store or succeeded here.
              const drv = dag.store.derivations.get(s.drvPath)!;
              for (const d of drv.inputDrvs.keys()) {
                const out = dag.store.derivations.get(d)!.outputs[0]!.path!;
                expect(dag.store.valid.has(out) || succeeded.has(d)).toBe(true);
              }
              runnable.add(s);
            },
            reprioritized: () => {},
            released: (s) => {
              expect(released.has(s)).toBe(false);
              released.add(s);
              runnable.delete(s);
            },
          },
        });
        const ended = new Map<number, number>();
        const end = (id: number) => ended.set(id, (ended.get(id) ?? 0) + 1);
        const results = await Promise.all(dag.builds.map((i, k) => graph.addBuild(queued(k + 1, dag.drvs[i]!.drvPath))));
        results.forEach((r, k) => r.kind !== 'queued' && end(k + 1));
        // Drive every runnable step to success or failure; sometimes cancel a build.
        while (runnable.size > 0) {
          const s = [...runnable][Math.floor(flip() * runnable.size)]!;
          runnable.delete(s);
          const live = [...graph.builds.values()];
          if (flip() < 0.1 && live.length > 0) {
            const b = live[Math.floor(flip() * live.length)]!;
            end(b.id);
            graph.removeBuild(b);
            if (released.has(s)) continue;
          }
          graph.transition(s, 'DISPATCH');
          graph.transition(s, 'START');
          if (flip() < 0.8) {
            graph.transition(s, 'SUCCEED');
            succeeded.add(s.drvPath);
            dag.store.valid.add(s.outputs[0]!.path!);
            for (const b of graph.completeSuccess(s)) {
              end(b.id);
              graph.removeBuild(b);
            }
          } else {
            const deps = graph.dependentBuilds(s);
            graph.transition(s, 'FAIL');
            for (const b of deps) {
              end(b.id);
              graph.removeBuild(b);
            }
          }
        }
        for (let k = 1; k <= dag.builds.length; k++) expect(ended.get(k)).toBe(1);
        expect(graph.steps.size).toBe(0);
        expect(graph.builds.size).toBe(0);
        for (const s of released) expect(s.refs).toBe(0);
      }),
      { numRuns: 100 },
    );
  });

  it('shares one step between builds and propagates the highest priority down the closure', async () => {
    const store = new MemoryStore();
    const mk = adder(store);
    const base = mk('base', []);
    const a = mk('a', [base]);
    const b = mk('b', [base]);
    const reprioritized: string[] = [];
    const graph = new StepGraph({ store, failures: { isFailed: async () => false }, clock: { now: () => 0 }, listener: { runnable: () => {}, reprioritized: (s) => reprioritized.push(s.drvPath), released: () => {} } });
    await graph.addBuild(queued(5, a, 0));
    await graph.addBuild(queued(3, b, 10));
    const s = graph.steps.get(base)!;
    expect(s.refs).toBe(2);
    expect(s.rdeps.map((r) => r.drvPath).sort()).toEqual([a, b].sort());
    expect(s.globalPriority).toBe(10);
    expect(s.lowestBuildId).toBe(3);
    graph.bump(graph.builds.get(5)!, 20);
    expect(s.globalPriority).toBe(20);
    expect(reprioritized).toContain(base);
    expect(graph.dependentBuilds(s).map((x) => x.id)).toEqual([3, 5]);
  });

  describe('a failure while builds load', () => {
    async function chain() {
      const store = new MemoryStore();
      const mk = adder(store);
      const n0 = mk('n0', []);
      const n1 = mk('n1', [n0]);
      const n2 = mk('n2', [n1, n0]);
      const n3 = mk('n3', [n2]);
      // Reading n1 waits for `open`, to hold n2's creation half-way.
      let open!: () => void;
      const gate = new Promise<void>((r) => (open = r));
      const read = store.readDerivation.bind(store);
      store.readDerivation = async (p: string) => (p === n1 ? gate.then(() => read(p)) : read(p));
      const graph = new StepGraph({ store, failures: { isFailed: async () => false }, clock: { now: () => 0 }, listener: { runnable: () => {}, reprioritized: () => {}, released: () => {} } });
      const fail = (drv: string) => {
        const s = graph.steps.get(drv)!;
        graph.transition(s, 'DISPATCH');
        graph.transition(s, 'START');
        const builds = graph.dependentBuilds(s);
        graph.transition(s, 'FAIL');
        return builds;
      };
      return { graph, n0, n1, n2, n3, open, fail };
    }

    it('a build that reaches a step still being created waits for it, and finds its failure', async () => {
      const { graph, n0, n2, n3, open, fail } = await chain();
      expect((await graph.addBuild(queued(1, n0))).kind).toBe('queued');
      const second = graph.addBuild(queued(2, n2)); // n2's creation waits on n1
      const third = graph.addBuild(queued(3, n3)); // reaches n2 while it is being created
      await new Promise((r) => setImmediate(r));
      expect(fail(n0).map((b) => b.id)).toEqual([1]);
      graph.removeBuild(graph.builds.get(1)!);
      open();
      for (const r of await Promise.all([second, third])) {
        expect(r).toMatchObject({ kind: 'cachedFailure', failedDrvPath: n0, own: false });
      }
      expect(graph.builds.size).toBe(0);
    });

    it('a build loaded after a failure, through a step that waited on it, finds the failure', async () => {
      const { graph, n0, n1, n2, open, fail } = await chain();
      open();
      expect((await graph.addBuild(queued(1, n1))).kind).toBe('queued');
      expect(fail(n0).map((b) => b.id)).toEqual([1]);
      expect(graph.steps.get(n1)!.state).toBe('failed');
      // Build 1's failure is still being written: n1 is in the graph.
      expect(await graph.addBuild(queued(2, n2))).toMatchObject({ kind: 'cachedFailure', failedDrvPath: n0, own: false });
      graph.removeBuild(graph.builds.get(1)!);
      expect(graph.steps.size).toBe(0);
    });
  });
});

describe('StepGraph.resolveTo', () => {
  /** A floating CA derivation (output path unknown) needing `deps`. */
  function caAdder(store: MemoryStore): (name: string, deps: string[]) => string {
    return (name, deps) => {
      const d = { drvPath: `/nix/store/${name.padStart(32, 'c')}-${name}.drv`, system: 'x86_64-linux', requiredFeatures: [], preferLocalBuild: false, outputs: [{ name: 'out', path: null }], inputDrvs: new Map(deps.map((x) => [x, ['out']])), isCA: true };
      store.add(d);
      return d.drvPath;
    };
  }

  it('moves dependents and builds to a shared resolved step; the originals end resolved and are released', async () => {
    const store = new MemoryStore();
    const ca = caAdder(store);
    const ia = adder(store);
    const base = ia('base', []);
    const b1 = ca('b1', [base]);
    const b2 = ca('b2', [base]);
    const top = ia('top', [b1]);
    const resolved = ca('resolved', []);
    const runnable: StepRecord[] = [];
    const released: [StepRecord, string][] = [];
    const graph = new StepGraph({
      store,
      failures: { isFailed: async () => false },
      clock: { now: () => 1 },
      listener: { runnable: (s) => runnable.push(s), reprioritized: () => {}, released: (s, prev) => released.push([s, prev]) },
    });
    const r1 = await graph.addBuild(queued(1, top, 5));
    const r2 = await graph.addBuild(queued(2, b2, 7));
    expect(r1.kind).toBe('queued');
    expect(r2.kind).toBe('queued');
    const baseStep = graph.steps.get(base)!;
    graph.transition(baseStep, 'DISPATCH');
    graph.transition(baseStep, 'START');
    graph.transition(baseStep, 'SUCCEED');
    graph.completeSuccess(baseStep);
    const s1 = graph.steps.get(b1)!;
    const s2 = graph.steps.get(b2)!;
    expect([s1.state, s2.state]).toEqual(['runnable', 'runnable']);

    const first = await graph.resolveTo(s1, resolved);
    expect(first.kind).toBe('step');
    const rs = (first as { step: StepRecord }).step;
    expect(rs.drvPath).toBe(resolved);
    expect(s1.state).toBe('resolved');
    // top now waits for the resolved step, which carries top's build priority.
    const topStep = graph.steps.get(top)!;
    expect(topStep.deps).toEqual([rs]);
    expect(rs.rdeps).toEqual([topStep]);
    expect(rs.globalPriority).toBe(5);
    expect(runnable).toContain(rs);
    expect(released).toContainEqual([s1, 'resolved']);
    expect(graph.steps.has(b1)).toBe(false);

    // The second build resolves to the same derivation: one step, now its own step too.
    const second = await graph.resolveTo(s2, resolved);
    expect(second).toEqual({ kind: 'step', step: rs });
    expect(graph.builds.get(2)!.toplevel).toBe(rs);
    expect(rs.builds.map((b) => b.id)).toEqual([2]);
    expect(rs.globalPriority).toBe(7);
    expect(rs.refs).toBe(2); // top and build 2

    // A step no longer runnable (released meanwhile) is left alone.
    const gone = await graph.resolveTo(s2, resolved);
    expect(gone.kind).toBe('gone');
    expect(rs.refs).toBe(2);

    // The resolved step builds: top becomes runnable, build 2 is its build; all is released at the end.
    graph.transition(rs, 'DISPATCH');
    graph.transition(rs, 'START');
    graph.transition(rs, 'SUCCEED');
    const builds = graph.completeSuccess(rs);
    expect(builds.map((b) => b.id)).toEqual([2]);
    expect(topStep.state).toBe('runnable');
    for (const b of builds) graph.removeBuild(b);
    graph.removeBuild(graph.builds.get(1)!);
    expect(graph.steps.size).toBe(0);
  });

  it('a step created while an input that succeeded still has its rows to write waits for them', async () => {
    const store = new MemoryStore();
    const add = adder(store);
    const a = add('a', []);
    const b = add('b', [a]);
    const runnable: string[] = [];
    const graph = new StepGraph({
      store,
      failures: { isFailed: async () => false },
      clock: { now: () => 0 },
      listener: { runnable: (s) => runnable.push(s.drvPath), reprioritized: () => {}, released: () => {} },
    });
    expect((await graph.addBuild(queued(1, a))).kind).toBe('queued');
    const stepA = graph.steps.get(a)!;
    graph.transition(stepA, 'DISPATCH');
    graph.transition(stepA, 'START');
    graph.transition(stepA, 'SUCCEED'); // in memory; its rows are being written
    const r = await graph.addBuild(queued(2, b));
    expect(r.kind).toBe('queued');
    const stepB = graph.steps.get(b)!;
    // Not runnable yet: a content-addressed output would be known to b's preparation only from a's rows.
    expect(stepB.state).toBe('queued');
    expect(stepB.deps).toEqual([stepA]);
    expect(runnable).toEqual([a]);
    // a's rows committed: b runs.
    for (const x of graph.completeSuccess(stepA)) graph.removeBuild(x);
    expect(stepB.state).toBe('runnable');
    expect(runnable).toEqual([a, b]);
    graph.removeBuild(graph.builds.get(2)!);
    expect(graph.steps.size).toBe(0);
  });
});
