import { EventEmitter } from 'node:events';
import { describe, expect, it } from 'vitest';
import { QueueMonitor } from '../../src/actors/queue-monitor.ts';
import { Scheduler } from '../../src/actors/scheduler.ts';
import type { SchedulerDb } from '../../src/db/scheduler-db-interface.ts';
import { PgSchedulerDb } from '../../src/db/scheduler-db.ts';
import { MemoryStore } from '../sim/memory-store.ts';
import { SimulatedBuilder } from '../sim/simulated-builder.ts';
import { useTestDatabase } from '../helpers/db.ts';
import { createJobset, queueBuild } from '../helpers/hydra-rows.ts';
import { machineRecord, quietLog, TEST_CONFIG, waitFor } from '../helpers/runtime.ts';

/** Holds the failure write of a step until the test opens it. */
class GatedDb extends PgSchedulerDb {
  open!: () => void;
  private readonly gate = new Promise<void>((r) => (this.open = r));
  override async stepFailed(a: Parameters<SchedulerDb['stepFailed']>[0]): Promise<number[]> {
    await this.gate;
    return super.stepFailed(a);
  }
}

describe('a build loaded while a step it needs has failed for good', () => {
  const db = useTestDatabase();

  it('ends with the step\'s status propagated (3 once retries ran out), not the 2 of a cached failure', async () => {
    const jobset = await createJobset(db.pool, 'prop', 'main');
    const store = new MemoryStore();
    const drv = (n: string, deps: string[] = []) => store.addTrivial(n, deps);
    const x = drv('x');
    const y = drv('y', [x]);
    const z = drv('z', [x]);
    const sdb = new GatedDb(db.pool);
    const scheduler = new Scheduler({ config: TEST_CONFIG, db: sdb, store, log: quietLog });
    const monitor = new QueueMonitor({ db: sdb, scheduler, listener: new EventEmitter(), log: quietLog, pollIntervalS: -1 });
    // x never builds: every attempt ends transiently, so its retries run out (status 3).
    scheduler.addMachine(machineRecord('m1'), new SimulatedBuilder({ store, behaviour: () => ({ kind: 'transient' }) }));
    const yId = await queueBuild(db.pool, jobset, y, 'y');
    await monitor.start();
    await waitFor(() => scheduler.graph.steps.get(x)?.state === 'failed', 5000, 'x to fail for good');

    // z, loaded while x's failure is being written, meets the failed x in the graph.
    const zId = await queueBuild(db.pool, jobset, z, 'z');
    await monitor.request('scan');
    const status = async (id: number) => (await db.pool.query('select finished, buildstatus, iscachedbuild from builds where id = $1', [id])).rows[0];
    await waitFor(async () => (await status(zId)).finished === 1, 5000, 'z to end');
    sdb.open();
    await waitFor(async () => (await status(yId)).finished === 1, 5000, 'y to end');
    expect(await status(zId)).toEqual({ finished: 1, buildstatus: 3, iscachedbuild: 0 });
    expect(await status(yId)).toEqual({ finished: 1, buildstatus: 3, iscachedbuild: 0 });
    // z's row for x is the failure propagated from y's build, where x ran.
    const zRows = (await db.pool.query('select drvpath, status, propagatedfrom from buildsteps where build = $1', [zId])).rows;
    expect(zRows).toEqual([{ drvpath: x, status: 3, propagatedfrom: yId }]);

    await scheduler.settle();
    scheduler.abandonWaitingWrites();
    await monitor.stop();
    await scheduler.drain(0);
  });
});
