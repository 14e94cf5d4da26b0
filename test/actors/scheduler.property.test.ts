import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { SimulatedBuilder, type SimBehaviour } from '../sim/simulated-builder.ts';
import { useTestDatabase } from '../helpers/db.ts';
import { createJobset, queueBuild } from '../helpers/hydra-rows.ts';
import { ExclusiveCheck, machineRecord, shadowTransitions, startRuntime, waitFor, within } from '../helpers/runtime.ts';
import { dagArbitrary, expectedStatus, replay, type Behaviour } from './arbitraries.ts';

const behaviourArb = fc.constantFrom<Behaviour>('ok', 'ok', 'ok', 'ok', 'ok', 'fail', 'flaky', 'broken', 'withOutput');

describe('scheduler on random DAGs (real PostgreSQL, simulated builders)', () => {
  const db = useTestDatabase();

  it('ends every build exactly once with Hydra\'s status, propagates failures, never double-builds, and releases everything', async () => {
    await fc.assert(
      fc.asyncProperty(
        dagArbitrary({ maxNodes: 20, systems: ['x86_64-linux', 'aarch64-linux', 'riscv64-linux'] }),
        fc.array(behaviourArb, { minLength: 20, maxLength: 20 }),
        fc.integer({ min: 1, max: 3 }),
        fc.array(fc.record({ build: fc.nat(), bump: fc.boolean() }), { maxLength: 3 }),
        async (dag, behaviours, machineCount, interventions) => {
          await db.pool.query('delete from builds; delete from failedpaths; delete from jobsets; delete from projects');
          const jobset = await createJobset(db.pool);
          const ids: number[] = [];
          for (const i of dag.builds) ids.push(await queueBuild(db.pool, jobset, dag.drvs[i]!.drvPath, `job${i}`, dag.drvs[i]!.system));
          const topOf = new Map(ids.map((id, k) => [id, dag.builds[k]!]));
          const validAtStart = new Set(dag.store.valid);

          // riscv64 has no machine: its steps must fail as unsupported (9).
          const unsupported = new Set(dag.drvs.flatMap((d, i) => (d.system === 'riscv64-linux' ? [i] : [])));
          const index = new Map(dag.drvs.map((d, i) => [d.drvPath, i]));
          const exclusive = new ExclusiveCheck();
          const early: string[] = [];
          // Attempts per derivation across every machine: a flaky step fails its first attempt
          // anywhere, then builds (each simulated builder counts only its own attempts).
          const attempts = new Map<string, number>();
          const behaviour = (drvPath: string): SimBehaviour => {
            const attempt = (attempts.get(drvPath) ?? 0) + 1;
            attempts.set(drvPath, attempt);
            const i = index.get(drvPath)!;
            for (const dep of dag.drvs[i]!.inputDrvs.keys()) {
              if (!dag.store.valid.has(dag.drvs[index.get(dep)!]!.outputs[0]!.path!)) early.push(`${drvPath} before ${dep}`);
            }
            switch (behaviours[i]) {
              case 'fail': return { kind: 'failure', status: 1 };
              case 'flaky': return attempt === 1 ? { kind: 'transient' } : { kind: 'success' };
              case 'broken': return { kind: 'transient' };
              case 'withOutput': return { kind: 'success', failedWithOutput: true };
              default: return { kind: 'success' };
            }
          };

          const { runtime } = await within(startRuntime(db.pool, dag.store), 15_000, 'runtime start');
          const disagreements = shadowTransitions(runtime);
          const endedIds: number[] = [];
          runtime.scheduler.onBuildFinished = (id) => endedIds.push(id);
          for (let m = 0; m < machineCount; m++) {
            const sim = new SimulatedBuilder({ store: dag.store, behaviour: (job) => behaviour(job.drvPath) });
            const systems = m % 2 === 0 ? ['x86_64-linux', 'aarch64-linux'] : ['x86_64-linux'];
            runtime.scheduler.addMachine(machineRecord(`m${m}`, { systems: new Set(systems), maxJobs: 1 + m }), exclusive.wrap(`m${m}`, sim));
          }
          // Cancel or bump some builds while the queue runs.
          const cancelled = new Set<number>();
          for (const x of interventions) {
            const id = ids[x.build % ids.length]!;
            if (x.bump) await db.pool.query('update builds set globalpriority = globalpriority + 10 where id = $1', [id]);
            else {
              const r = await db.pool.query('update builds set finished = 1, buildstatus = 4, starttime = 1, stoptime = 1 where id = $1 and finished = 0', [id]);
              if (r.rowCount) cancelled.add(id);
            }
            await within(runtime.monitor.request('scan'), 15_000, 'queue scan');
          }
          await within(runtime.initialLoad, 15_000, 'initial load');
          await waitFor(async () => (await db.pool.query('select count(*)::int n from builds where finished = 0')).rows[0].n === 0, 15_000, 'all builds to finish');
          await within(runtime.scheduler.settle(), 15_000, 'writes to settle');
          await waitFor(() => runtime.scheduler.graph.steps.size === 0, 5000, 'graph to empty');

          const rows = (await db.pool.query('select id, buildstatus, iscachedbuild from builds order by id')).rows;
          for (const r of rows) {
            if (cancelled.has(r.id)) expect(r.buildstatus).toBe(4);
            else {
              const restoreValid = new Set(dag.store.valid);
              dag.store.valid.clear();
              for (const p of validAtStart) dag.store.valid.add(p);
              const want = expectedStatus(dag, behaviours, dag.store.valid, topOf.get(r.id)!, unsupported);
              dag.store.valid.clear();
              for (const p of restoreValid) dag.store.valid.add(p);
              expect({ id: r.id, status: want.includes(r.buildstatus) ? r.buildstatus : want }).toEqual({ id: r.id, status: r.buildstatus });
            }
          }
          // Exactly once: no build reported finished twice, and none of ours overwrote a cancellation.
          expect(new Set(endedIds).size).toBe(endedIds.length);
          for (const id of endedIds) expect(cancelled.has(id)).toBe(false);
          // Dependency failures point at the build where the step really failed.
          const propagated = (await db.pool.query(
            `select s.build, s.drvpath, s.propagatedfrom, o.status as origstatus from buildsteps s
             left join buildsteps o on o.build = s.propagatedfrom and o.drvpath = s.drvpath and o.propagatedfrom is null
             where s.propagatedfrom is not null`,
          )).rows;
          for (const p of propagated) expect(p.origstatus).not.toBeNull();
          expect((await db.pool.query('select count(*)::int n from buildsteps where busy != 0')).rows[0].n).toBe(0);
          expect(early).toEqual([]);
          expect(exclusive.violations).toEqual([]);
          expect(disagreements).toEqual([]);
          expect(runtime.scheduler.graph.builds.size).toBe(0);
          expect(runtime.scheduler.activeJobs).toBe(0);
          expect(runtime.scheduler.dispatcher.stats.runnable).toBe(0);
          expect(runtime.scheduler.dispatcher.stats.retryWaiting).toBe(0);
          await within(runtime.stop(0), 15_000, 'runtime stop');
          expect(runtime.scheduler.dispatcher.pendingTimers).toBe(0);
        },
      ),
      { numRuns: Number(process.env.RUNS ?? 25), endOnFailure: true, ...replay() } // a failing run waits out timeouts: no shrinking,
    );
  }, 240_000);
});
