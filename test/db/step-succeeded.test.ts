/**
 * A step's success written as one statement (step-succeeded.sql, for a
 * result alone) leaves the same rows and sends the same NOTIFYs, in the same
 * order, as the multi-statement transaction that writes the others.
 */
import fc from 'fast-check';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { NotificationListener, type Notification } from '../../src/db/listener.ts';
import { withTransaction } from '../../src/db/pool.ts';
import { PgSchedulerDb } from '../../src/db/scheduler-db.ts';
import { startStep } from '../../src/db/step-rows.ts';
import { StepType } from '../../src/db/status.ts';
import { useTestDatabase } from '../helpers/db.ts';
import { createJobset, queueBuild } from '../helpers/hydra-rows.ts';

describe('a success alone, in one statement', () => {
  const db = useTestDatabase();
  let listener: NotificationListener;
  const seen: Notification[] = [];
  let jobsetId: number;
  let n = 0;
  beforeAll(async () => {
    jobsetId = await createJobset(db.pool);
    listener = new NotificationListener({ url: db.url, channels: ['build_finished', 'step_finished'], minBackoffMs: 20, maxBackoffMs: 200 });
    listener.on('notification', (x: Notification) => seen.push(x));
    await listener.start();
  });
  afterAll(async () => {
    await listener.stop();
  });

  interface Scenario {
    outputs: number;
    /** Builds the step ends beside its own: whether each is cached, whether it had finished already. */
    others: { cached: boolean; finished: boolean }[];
    ownFinished: boolean;
    rowMissing: boolean;
    failedWithOutput: boolean;
    timesBuilt: number;
    releaseName: string | null;
  }

  /** Writes the scenario's success (through the one statement unless `viaTransaction`); returns the rows and NOTIFYs with build ids as indexes. */
  async function run(s: Scenario, viaTransaction: boolean): Promise<unknown> {
    const drv = `/nix/store/${String(++n).padStart(32, '0')}-x.drv`;
    const names = ['out', 'dev', 'doc'].slice(0, s.outputs);
    const outs = names.map((name) => ({ name, path: null }));
    const own = await queueBuild(db.pool, jobsetId, drv, 'job', 'x86_64-linux', outs);
    const others: number[] = [];
    for (const _ of s.others) others.push(await queueBuild(db.pool, jobsetId, drv, 'job', 'x86_64-linux', outs));
    const ids = [own, ...others];
    for (const [i, finished] of [s.ownFinished, ...s.others.map((o) => o.finished)].entries()) {
      if (finished) await db.pool.query('update builds set finished = 1, buildstatus = 3, starttime = 4, stoptime = 5, iscachedbuild = 0 where id = $1', [ids[i]]);
    }
    const stepnr = await withTransaction(db.pool, (c) =>
      startStep(c, { buildId: own, drvPath: drv, system: 'x86_64-linux', machine: 'm', startTime: 10, busy: 1, type: StepType.Build, outputs: outs }),
    );
    const seenBefore = seen.length;
    const sdb = new PgSchedulerDb(db.pool);
    const a = {
      buildId: own,
      stepnr: s.rowMissing ? stepnr + 1 : stepnr,
      drvPath: drv,
      system: 'x86_64-linux',
      machine: 'ssh://b',
      startTime: 11,
      stopTime: 20,
      overheadMs: 7,
      logFile: '/logs/x.drv',
      outputs: names.map((name, i) => ({ name, path: `/nix/store/${String(i).repeat(32)}-x-${name}`, narSize: 100 + i, closureSize: 300 + i })),
      failedWithOutput: s.failedWithOutput,
      releaseName: s.releaseName,
      products: [],
      // A metric sends the result through the transaction; its row is not compared.
      metrics: viaTransaction ? [{ name: 'm', value: 1, unit: null }] : [],
      timesBuilt: s.timesBuilt,
      isNonDeterministic: s.timesBuilt > 1,
      builds: [{ id: own, isCachedBuild: false }, ...others.map((id, i) => ({ id, isCachedBuild: s.others[i]!.cached }))],
    };
    const [ended] = await sdb.stepsSucceeded([a]);
    const ix = (id: number) => ids.indexOf(id);
    const expected = (s.rowMissing ? 0 : 1) + (ended!.length > 0 ? 1 : 0);
    const deadline = Date.now() + 5000;
    while (seen.length < seenBefore + expected && Date.now() < deadline) await new Promise((r) => setTimeout(r, 10));
    await new Promise((r) => setTimeout(r, 30));
    const notes = seen.slice(seenBefore).map((x) => ({ channel: x.channel, payload: x.payload.split('\t').map((f, i) => (i === 0 || x.channel === 'build_finished' ? ix(Number(f)) : f)) }));
    const builds = (
      await db.pool.query(
        'select id, finished, buildstatus, starttime, stoptime, size, closuresize, releasename, iscachedbuild, notificationpendingsince from builds where id = any($1) order by id',
        [ids],
      )
    ).rows.map((r) => ({ ...r, id: ix(r.id) }));
    const buildOutputs = (await db.pool.query('select build, name, path from buildoutputs where build = any($1) order by build, name', [ids])).rows.map((r) => ({ ...r, build: ix(r.build) }));
    const steps = (await db.pool.query('select * from buildsteps where build = any($1) order by build, stepnr', [ids])).rows.map((r) => ({ ...r, build: ix(r.build), drvpath: null }));
    const stepOutputs = (await db.pool.query('select build, stepnr, name, path from buildstepoutputs where build = any($1) order by build, stepnr, name', [ids])).rows.map((r) => ({ ...r, build: ix(r.build) }));
    return { ended: ended!.map(ix), notes, builds, buildOutputs, steps, stepOutputs };
  }

  it('property: the same rows and NOTIFYs as the transaction', async () => {
    const scenario = fc.record({
      outputs: fc.integer({ min: 1, max: 3 }),
      others: fc.array(fc.record({ cached: fc.boolean(), finished: fc.boolean() }), { maxLength: 3 }),
      ownFinished: fc.boolean(),
      rowMissing: fc.boolean(),
      failedWithOutput: fc.boolean(),
      timesBuilt: fc.integer({ min: 1, max: 3 }),
      releaseName: fc.option(fc.constantFrom('x-1.0', 'y')),
    });
    let sawEnded = 0;
    await fc.assert(
      fc.asyncProperty(scenario, async (s) => {
        const alone = await run(s, false);
        const inTransaction = await run(s, true);
        expect(alone).toEqual(inTransaction);
        if ((alone as { ended: number[] }).ended.length > 1) sawEnded++;
      }),
      { numRuns: 25, examples: [[{ outputs: 2, others: [{ cached: true, finished: false }, { cached: false, finished: true }], ownFinished: false, rowMissing: false, failedWithOutput: false, timesBuilt: 1, releaseName: null }]] },
    );
    // The comparison covered builds ending together.
    expect(sawEnded).toBeGreaterThan(0);
  });
});
