import fc from 'fast-check';
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createPool } from '../../src/db/pool.ts';
import { SimulatedBuilder, type SimBehaviour } from '../../src/sim/simulated-builder.ts';
import { createTestDatabase, type TestDatabase } from '../helpers/db.ts';
import { createJobset, queueBuild } from '../helpers/hydra-rows.ts';
import { machineRecord, startRuntime, waitFor, within } from '../helpers/runtime.ts';
import { dagArbitrary, replay } from './arbitraries.ts';

/**
 * A pool whose process "dies" after its n-th query: the backends are
 * terminated (open transactions roll back) and every later query fails, so
 * nothing more reaches the database — as if the runner was killed there.
 */
function crashingPool(url: string, crashAt: number, admin: pg.Pool): { pool: pg.Pool; crashed: () => boolean } {
  const name = `hydrant-crash-${Math.random().toString(36).slice(2)}`;
  const pool = createPool(`${url}?application_name=${name}`, { max: 4, applicationName: name });
  let count = 0;
  let dead = false;
  const clients = new Set<pg.PoolClient>();
  // A dead process's connections close: destroy the sockets, so the server
  // rolls back whatever they had open (nothing is left idle in a transaction).
  const kill = (client: pg.PoolClient) => (client as unknown as { connection?: { stream?: { destroy(): void } } }).connection?.stream?.destroy();
  pool.on('connect', (client) => {
    clients.add(client);
    if (dead) kill(client);
    const query = client.query.bind(client) as (...a: unknown[]) => Promise<unknown>;
    (client as unknown as { query: (...a: unknown[]) => unknown }).query = (...args: unknown[]) => {
      if (dead) {
        const err = new Error('runner crashed');
        const cb = args[args.length - 1];
        if (typeof cb === 'function') return void process.nextTick(() => (cb as (e: Error) => void)(err));
        if (typeof (args[0] as { submit?: unknown })?.submit === 'function') throw err; // a cursor
        return Promise.reject(err);
      }
      if (++count === crashAt) {
        dead = true;
        void admin.query('select pg_terminate_backend(pid) from pg_stat_activity where application_name = $1', [name]);
        setImmediate(() => clients.forEach(kill)); // after this query is on its way
      }
      return query(...args);
    };
  });
  return { pool, crashed: () => dead };
}

describe('restart resilience (real PostgreSQL, simulated builders)', () => {
  let db: TestDatabase;
  beforeAll(async () => {
    db = await createTestDatabase();
  });
  afterAll(() => db.drop());

  it('after a crash at a random point, a new runner on the same database ends every build exactly once with no busy or duplicate rows', async () => {
    let crashes = 0;
    let runs = 0;
    await fc.assert(
      fc.asyncProperty(
        dagArbitrary({ maxNodes: 15 }),
        fc.array(fc.constantFrom<'ok' | 'fail' | 'flaky'>('ok', 'ok', 'ok', 'fail', 'flaky'), { minLength: 15, maxLength: 15 }),
        fc.integer({ min: 1, max: 120 }),
        async (dag, behaviours, crashAt) => {
          await db.pool.query('delete from builds; delete from failedpaths; delete from jobsets; delete from projects');
          const jobset = await createJobset(db.pool);
          for (const i of dag.builds) await queueBuild(db.pool, jobset, dag.drvs[i]!.drvPath, `job${i}`);
          const index = new Map(dag.drvs.map((d, i) => [d.drvPath, i]));
          const behaviour = (drvPath: string, attempt: number): SimBehaviour => {
            const b = behaviours[index.get(drvPath)!];
            if (b === 'fail') return { kind: 'failure', status: 1 };
            if (b === 'flaky' && attempt === 1) return { kind: 'transient' };
            return { kind: 'success' };
          };
          const run = async (pool: pg.Pool) => {
            const { runtime } = await startRuntime(pool, dag.store);
            runtime.scheduler.addMachine(machineRecord('m1', { maxJobs: 2 }), new SimulatedBuilder({ store: dag.store, behaviour: (j, a) => behaviour(j.drvPath, a) }));
            return runtime;
          };

          // First runner: dies after `crashAt` queries (or finishes first).
          const first = crashingPool(db.url, crashAt, db.pool);
          const a = await within(run(first.pool), 10_000, 'first runner start').catch(() => null); // it may die while starting
          await waitFor(async () => first.crashed() || (await db.pool.query('select count(*)::int n from builds where finished = 0')).rows[0].n === 0, 15_000, 'first runner');
          runs++;
          if (first.crashed()) crashes++;
          a?.scheduler.dispatcher.close();
          void a?.monitor.stop();
          void first.pool.end().catch(() => {}); // a dead process does not clean up

          // Second runner, from the database (and the store) alone.
          const pool = createPool(db.url, { max: 4 });
          const b = await within(run(pool), 10_000, 'second runner start');
          try {
            await within(b.initialLoad, 10_000, 'second runner initial load');
            await waitFor(async () => (await db.pool.query('select count(*)::int n from builds where finished = 0')).rows[0].n === 0, 15_000, 'second runner');
            await within(b.scheduler.settle(), 10_000, 'writes to settle');
            await waitFor(() => b.scheduler.graph.steps.size === 0, 5000, 'graph to empty');
          } finally {
            // Even when this run fails, leave nothing running into the next one.
            await within(b.stop(0), 10_000, 'second runner stop').catch(() => {});
            await within(pool.end(), 10_000, 'pool end').catch(() => {});
          }

          expect((await db.pool.query('select count(*)::int n from buildsteps where busy != 0')).rows[0].n).toBe(0);
          // A finished build is consistent: Hydra's check constraints hold and status is set.
          const bad = await db.pool.query('select id from builds where finished = 1 and (buildstatus is null or starttime is null or stoptime is null)');
          expect(bad.rows).toEqual([]);
          // No attempt recorded twice: at most one successful row per derivation, one propagated row per (build, drv).
          const dupOk = await db.pool.query('select drvpath, count(*)::int n from buildsteps where status = 0 group by drvpath having count(*) > 1');
          expect(dupOk.rows).toEqual([]);
          const dupProp = await db.pool.query('select build, drvpath from buildsteps where propagatedfrom is not null group by build, drvpath having count(*) > 1');
          expect(dupProp.rows).toEqual([]);
          // Builds that failed have a failing step row of their own or a propagated one.
          const orphanFailures = await db.pool.query(
            `select b.id from builds b where b.buildstatus in (1, 2) and not exists (select 1 from buildsteps s where s.build = b.id and s.status in (1, 8))`,
          );
          expect(orphanFailures.rows).toEqual([]);
        },
      ),
      // No shrinking: a failing run may wait out its timeouts, so shrinking would take very long.
      { numRuns: Number(process.env.RUNS ?? 30), endOnFailure: true, ...replay() },
    );
    // Many runs really died part-way (the others finished before their crash point).
    expect(crashes).toBeGreaterThanOrEqual(runs / 4);
  }, 300_000);
});
