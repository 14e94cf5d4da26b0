import { EventEmitter } from 'node:events';
import { describe, expect, it } from 'vitest';
import type { StepRecord } from '../../src/actors/model.ts';
import type { Prepared, StepPreparer } from '../../src/actors/prepare-step.ts';
import { QueueMonitor } from '../../src/actors/queue-monitor.ts';
import { Scheduler } from '../../src/actors/scheduler.ts';
import { PgSchedulerDb } from '../../src/db/scheduler-db.ts';
import { MemoryStore } from '../sim/memory-store.ts';
import { SimulatedBuilder } from '../sim/simulated-builder.ts';
import { useTestDatabase } from '../helpers/db.ts';
import { createJobset, queueBuild } from '../helpers/hydra-rows.ts';
import { machineRecord, quietLog, TEST_CONFIG, waitFor } from '../helpers/runtime.ts';

/** A preparer that holds chosen steps until the test lets them go (or fails them). */
class HeldPreparer implements StepPreparer {
  readonly seen: string[] = [];
  readonly held = new Map<string, { resolve(p: Prepared): void; reject(e: Error): void }>();
  constructor(private readonly hold: (drvPath: string) => boolean) {}

  prepare(step: StepRecord): Prepared | Promise<Prepared> {
    this.seen.push(step.drvPath);
    if (!this.hold(step.drvPath)) return 'dispatch';
    return new Promise((resolve, reject) => this.held.set(step.drvPath, { resolve, reject }));
  }
}

describe('the prepare-step point', () => {
  const db = useTestDatabase();

  it('queues a step only once its preparation ends; a failed preparation builds it as it is; a step released meanwhile is never queued', async () => {
    const jobset = await createJobset(db.pool, 'prep', 'main');
    const pool = db.pool;
    const store = new MemoryStore();
    const drv = (n: string, deps: string[] = []) => store.addTrivial(n, deps);
    const a = drv('a');
    const b = drv('b', [a]);
    const c = drv('c');
    const d = drv('d');
    const preparer = new HeldPreparer((p) => p === a || p === c || p === d);
    const sdb = new PgSchedulerDb(pool);
    const scheduler = new Scheduler({ config: TEST_CONFIG, db: sdb, store, log: quietLog, preparer });
    const monitor = new QueueMonitor({ db: sdb, scheduler, listener: new EventEmitter(), log: quietLog, pollIntervalS: -1 });
    const started: string[] = [];
    scheduler.addMachine(machineRecord('m1', { maxJobs: 4 }), new SimulatedBuilder({ store, onStart: (j) => started.push(j.drvPath) }));
    const ids = { b: await queueBuild(pool, jobset, b, 'b'), c: await queueBuild(pool, jobset, c, 'c'), d: await queueBuild(pool, jobset, d, 'd') };
    await monitor.start();
    await waitFor(() => preparer.held.size === 3, 5000, 'a, c and d to be held in preparation');

    // Held: nothing is queued or started; b waits on a.
    expect(started).toEqual([]);
    expect(scheduler.dispatcher.stats.runnable).toBe(0);

    // d's build goes away while d is being prepared: d is never queued, even once its preparation ends.
    await pool.query('delete from builds where id = $1', [ids.d]);
    await monitor.request('scan');
    expect(scheduler.hasBuild(ids.d)).toBe(false);
    preparer.held.get(d)!.resolve('dispatch');
    preparer.held.get(c)!.reject(new Error('substituter unreachable'));
    preparer.held.get(a)!.resolve('dispatch');

    const finished = async () => (await pool.query('select id, buildstatus from builds where finished = 1 order by id')).rows;
    await waitFor(async () => (await finished()).length === 2, 5000, 'b and c to finish');
    expect(await finished()).toEqual([{ id: ids.b, buildstatus: 0 }, { id: ids.c, buildstatus: 0 }]);
    expect(started.sort()).toEqual([a, b, c].sort());
    // b was prepared too (synchronously), once, when a had been built.
    expect(preparer.seen.sort()).toEqual([a, b, c, d].sort());
    await scheduler.settle();
    expect(scheduler.dispatcher.stats.runnable).toBe(0);
    expect(scheduler.graph.steps.size).toBe(0);
    scheduler.abandonWaitingWrites();
    await monitor.stop();
    await scheduler.drain(0);
  });
});
