import { EventEmitter } from 'node:events';
import { describe, expect, it } from 'vitest';
import { QueueMonitor } from '../../src/actors/queue-monitor.ts';
import type { StepRecord } from '../../src/actors/model.ts';
import { Scheduler } from '../../src/actors/scheduler.ts';
import { StepGraph } from '../../src/actors/step-graph.ts';
import type { SchedulerDb } from '../../src/db/scheduler-db-interface.ts';
import { PgSchedulerDb } from '../../src/db/scheduler-db.ts';
import { MemoryStore } from '../sim/memory-store.ts';
import { SimulatedBuilder } from '../sim/simulated-builder.ts';
import { useTestDatabase } from '../helpers/db.ts';
import { createJobset, queueBuild } from '../helpers/hydra-rows.ts';
import { machineRecord, quietLog, TEST_CONFIG, waitFor } from '../helpers/runtime.ts';

/** Holds every success write until the test opens it: the step has succeeded in memory, its rows are not written. */
class GatedDb extends PgSchedulerDb {
  open!: () => void;
  private readonly gate = new Promise<void>((r) => (this.open = r));
  override async stepsSucceeded(list: Parameters<SchedulerDb['stepsSucceeded']>[0]): Promise<number[][]> {
    await this.gate;
    return super.stepsSucceeded(list);
  }
}

describe('a build loaded between a content-addressed step\'s success and its rows', () => {
  const db = useTestDatabase();

  it('ends cached with the real output paths (from the in-memory result), not null ones', async () => {
    const jobset = await createJobset(db.pool, 'ca-window', 'main');
    const store = new MemoryStore();
    const ca = '/nix/store/cccccccccccccccccccccccccccccccc-ca.drv';
    store.add({ drvPath: ca, system: 'x86_64-linux', requiredFeatures: [], preferLocalBuild: false, outputs: [{ name: 'out', path: null }, { name: 'dev', path: null }], inputDrvs: new Map(), isCA: true });
    const sdb = new GatedDb(db.pool);
    const scheduler = new Scheduler({ config: TEST_CONFIG, db: sdb, store, log: quietLog });
    const monitor = new QueueMonitor({ db: sdb, scheduler, listener: new EventEmitter(), log: quietLog, pollIntervalS: -1 });
    scheduler.addMachine(machineRecord('m1'), new SimulatedBuilder({ store }));
    const declared = [{ name: 'out', path: null }, { name: 'dev', path: null }];
    const first = await queueBuild(db.pool, jobset, ca, 'first', 'x86_64-linux', declared);
    await monitor.start();
    // The interleaving: the step has succeeded in memory and its success write is held.
    await waitFor(() => scheduler.graph.steps.get(ca)?.state === 'succeeded', 5000, 'the CA step to succeed in memory');

    const second = await queueBuild(db.pool, jobset, ca, 'second', 'x86_64-linux', declared);
    await monitor.request('scan');
    const row = async (id: number) => (await db.pool.query('select finished, buildstatus, iscachedbuild from builds where id = $1', [id])).rows[0];
    const outputs = async (id: number) => (await db.pool.query('select name, path from buildoutputs where build = $1 order by name', [id])).rows;
    await waitFor(async () => (await row(second)).finished === 1, 5000, 'the second build to end');
    // Still held: what the second build got came from memory, not from the rows.
    expect((await row(first)).finished).toBe(0);
    sdb.open();
    await waitFor(async () => (await row(first)).finished === 1, 5000, 'the first build to end');

    const built = [{ name: 'dev', path: `${ca.slice(0, -4)}-dev` }, { name: 'out', path: `${ca.slice(0, -4)}-out` }];
    expect(await row(second)).toEqual({ finished: 1, buildstatus: 0, iscachedbuild: 1 });
    expect(await outputs(second)).toEqual(built);
    expect(await outputs(first)).toEqual(built);

    await scheduler.settle();
    await monitor.stop();
    await scheduler.drain(0);
  });
});

describe('a build loaded for a resolved original whose resolved step was released while a loader held the original', () => {
  /** A graph with a build of `original` resolved to `resolved`, the original held by a loader. */
  async function resolvedAndHeld() {
    const store = new MemoryStore();
    const ca = (name: string) => {
      const drvPath = `/nix/store/${name.padStart(32, 'c')}-${name}.drv`;
      store.add({ drvPath, system: 'x86_64-linux', requiredFeatures: [], preferLocalBuild: false, outputs: [{ name: 'out', path: null }], inputDrvs: new Map(), isCA: true });
      return drvPath;
    };
    const original = ca('original');
    const resolved = ca('resolved');
    const graph = new StepGraph({ store, failures: { isFailed: async () => false }, clock: { now: () => 1 }, listener: { runnable: () => {}, reprioritized: () => {}, released: () => {} } });
    expect((await graph.addBuild(queued(1, original))).kind).toBe('queued');
    const o = graph.steps.get(original)!;
    // A loader's hold on the original (a dependent being created reads its inputs meanwhile).
    const internals = graph as unknown as { acquire(d: string): Promise<StepRecord | null>; releaseHold(s: StepRecord): void };
    expect(await internals.acquire(original)).toBe(o);
    const r = await graph.resolveTo(o, resolved);
    expect(r.kind).toBe('step');
    return { graph, original, resolved, o, rs: (r as { step: StepRecord }).step, release: () => internals.releaseHold(o) };
  }
  const queued = (id: number, drvPath: string) => ({ id, jobset: { id: 1, name: 'p:j', shares: 1, seconds: 0 } as never, job: 'j', drvPath, timestamp: 0, maxSilent: 0, timeout: 0, localPriority: 0, globalPriority: 0 });

  it('ends as a failure of the resolved derivation when it failed (not as a success)', async () => {
    const { graph, original, resolved, rs, release } = await resolvedAndHeld();
    for (const e of ['DISPATCH', 'START', 'FAIL'] as const) graph.transition(rs, e);
    graph.removeBuild(graph.builds.get(1)!);
    expect(graph.steps.has(resolved)).toBe(false);
    expect(graph.steps.get(original)?.state).toBe('resolved');
    expect(await graph.addBuild(queued(2, original))).toMatchObject({ kind: 'cachedFailure', failedDrvPath: resolved, own: true, failedStep: rs });
    release();
    expect(graph.steps.size).toBe(0);
  });

  it('ends cached with the resolved step\'s outputs', async () => {
    const { graph, original, resolved, rs, release } = await resolvedAndHeld();
    const out = [{ name: 'out', path: '/nix/store/rrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrr-resolved' }];
    for (const e of ['DISPATCH', 'START'] as const) graph.transition(rs, e);
    graph.transition(rs, 'SUCCEED', out);
    for (const b of graph.completeSuccess(rs)) graph.removeBuild(b);
    // The resolved step is gone; the original is still held, in state resolved.
    expect(graph.steps.has(resolved)).toBe(false);
    expect(graph.steps.get(original)?.state).toBe('resolved');

    expect(await graph.addBuild(queued(2, original))).toMatchObject({ kind: 'cached', outputs: out });
    release();
    expect(graph.steps.size).toBe(0);
  });
});
