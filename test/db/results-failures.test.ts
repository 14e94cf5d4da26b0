import { describe, expect, it } from 'vitest';
import { finishBuildsFailed, type FinishBuildsFailed } from '../../src/db/build-failures.ts';
import { withTransaction } from '../../src/db/pool.ts';
import { finishStep, startStep } from '../../src/db/step-rows.ts';
import { buildStatusForFailedStep, dependentStatusForFailedStep } from '../../src/db/status.ts';
import { useTestDatabase } from '../helpers/db.ts';
import { queueBuild, useJobset } from '../helpers/hydra-rows.ts';

const DRV = '/nix/store/0000000000000000000000000000000f-broken.drv';
const OUT = '/nix/store/0000000000000000000000000000000f-broken';

describe('failing builds that need a failed step', () => {
  const db = useTestDatabase();
  const jobset = useJobset(db);

  async function queueMany(n: number): Promise<number[]> {
    const { rows } = await db.pool.query<{ id: number }>(
      `insert into builds (finished, timestamp, jobset_id, job, drvpath, system)
       select 0, 1, $1, 'dep' || g, '/nix/store/dep-' || g || '.drv', 'x86_64-linux' from generate_series(1, $2) g
       returning id`,
      [jobset.id, n],
    );
    return rows.map((r) => r.id).sort((a, b) => a - b);
  }

  function failure(over: Partial<FinishBuildsFailed>): FinishBuildsFailed {
    return {
      failedBuildId: null, failedStepDrvPath: DRV, stepStatus: 1, builds: [], startTime: 100, stopTime: 200,
      errorMsg: 'builder failed with exit code 1', machine: 'ssh://b1', isCachedBuild: false, ...over,
    };
  }

  it('maps step statuses to build statuses for the build whose own derivation failed', () => {
    expect([1, 3, 6, 7, 8, 9, 10, 11, 12].map(buildStatusForFailedStep)).toEqual([1, 3, 6, 7, 1, 9, 10, 11, 12]);
    for (const s of [0, 2, 4, 5, 13, 99]) expect(() => buildStatusForFailedStep(s)).toThrow(RangeError);
  });

  it('maps step statuses to build statuses for the builds that need the failed step as a dependency', () => {
    // Hydra's Rust runner state/mod.rs:2441-2449: DepFailed only when the step failed (1), else the step's status;
    // a cached failure (8) counts as failed (C++ state.hh:78), so 2.
    expect([1, 3, 6, 7, 8, 9, 10, 11, 12].map(dependentStatusForFailedStep)).toEqual([2, 3, 6, 7, 2, 9, 10, 11, 12]);
  });

  it('gives every build the timed-out step status (Hydra: 2 only for a failed build), and propagated rows to all but the failed build', async () => {
    const own = await queueBuild(db.pool, jobset.id, DRV);
    const ownToo = await queueBuild(db.pool, jobset.id, DRV); // a second build of the same derivation
    const [dep1, dep2, done] = (await queueMany(3)) as [number, number, number];
    await db.pool.query('update builds set finished = 1, buildstatus = 0, starttime = 5, stoptime = 6 where id = $1', [done]);
    // dep1 already has a step of its own: the propagated row takes the next stepnr.
    await db.pool.query(`insert into buildsteps (build, stepnr, type, drvpath, busy, status) values ($1, 1, 0, 'x', 0, 0)`, [dep1]);
    const ended = await withTransaction(db.pool, async (c) => {
      const nr = await startStep(c, { buildId: own, drvPath: DRV, system: 'x86_64-linux', machine: 'ssh://b1', startTime: 100,
        busy: 30, type: 0, outputs: [{ name: 'out', path: OUT }] });
      await finishStep(c, { buildId: own, stepnr: nr, status: 7, errorMsg: 'timed out', startTime: 100, stopTime: 200,
        machine: 'ssh://b1', overhead: 5, timesBuilt: 1, isNonDeterministic: false, logFile: null });
      return finishBuildsFailed(c, failure({
        failedBuildId: own, stepStatus: 7, errorMsg: 'timed out', system: 'x86_64-linux',
        outputs: [{ name: 'out', path: OUT }],
        builds: [{ id: dep2, own: false }, { id: own, own: true }, { id: ownToo, own: true }, { id: dep1, own: false },
          { id: done, own: false }, { id: dep1, own: false }],
      }));
    });
    expect(ended).toEqual([own, ownToo, dep1, dep2].sort((a, b) => a - b));
    const { rows: builds } = await db.pool.query(
      `select id, finished, buildstatus, starttime, stoptime, iscachedbuild, notificationpendingsince
       from builds where id = any($1) order by id`, [[own, ownToo, dep1, dep2, done]]);
    const row = (id: number) => builds.find((b) => b.id === id);
    expect(row(own)).toEqual({ id: own, finished: 1, buildstatus: 7, starttime: 100, stoptime: 200, iscachedbuild: 0, notificationpendingsince: 200 });
    expect(row(ownToo)).toEqual({ id: ownToo, finished: 1, buildstatus: 7, starttime: 100, stoptime: 200, iscachedbuild: 0, notificationpendingsince: 200 });
    // A timeout is passed on to dependents as 7 (Rust runner state/mod.rs:2441-2449, C++ builder.cc:458).
    expect(row(dep1)).toEqual({ id: dep1, finished: 1, buildstatus: 7, starttime: 100, stoptime: 200, iscachedbuild: 0, notificationpendingsince: 200 });
    expect(row(dep2)).toMatchObject({ buildstatus: 7 });
    expect(row(done)).toEqual({ id: done, finished: 1, buildstatus: 0, starttime: 5, stoptime: 6, iscachedbuild: null, notificationpendingsince: null });

    const { rows: steps } = await db.pool.query(
      `select build, stepnr, type, drvpath, busy, status, errormsg, starttime, stoptime, machine, system, propagatedfrom
       from buildsteps where build = any($1) order by build, stepnr`, [[own, ownToo, dep1, dep2, done]]);
    const propagated = { type: 0, drvpath: DRV, busy: 0, status: 7, errormsg: 'timed out', starttime: null, stoptime: null,
      machine: 'ssh://b1', system: 'x86_64-linux', propagatedfrom: own };
    expect(steps).toEqual([
      { build: own, stepnr: 1, type: 0, drvpath: DRV, busy: 0, status: 7, errormsg: 'timed out', starttime: 100, stoptime: 200,
        machine: 'ssh://b1', system: 'x86_64-linux', propagatedfrom: null },
      { build: ownToo, stepnr: 1, ...propagated },
      { build: dep1, stepnr: 1, type: 0, drvpath: 'x', busy: 0, status: 0, errormsg: null, starttime: null, stoptime: null,
        machine: '', system: null, propagatedfrom: null },
      { build: dep1, stepnr: 2, ...propagated },
      { build: dep2, stepnr: 1, ...propagated },
    ].sort((x, y) => x.build - y.build || x.stepnr - y.stepnr));
    const { rows: outs } = await db.pool.query(
      'select build, stepnr, name, path from buildstepoutputs where build = any($1) order by build, stepnr', [[ownToo, dep1, dep2]]);
    expect(outs).toEqual([
      { build: ownToo, stepnr: 1, name: 'out', path: OUT },
      { build: dep1, stepnr: 2, name: 'out', path: OUT },
      { build: dep2, stepnr: 1, name: 'out', path: OUT },
    ].sort((x, y) => x.build - y.build));

    // A second failure of the same step ends nothing and adds no rows.
    const again = await withTransaction(db.pool, (c) =>
      finishBuildsFailed(c, failure({ failedBuildId: own, builds: [{ id: own, own: true }, { id: dep1, own: false }] })));
    expect(again).toEqual([]);
    expect((await db.pool.query('select count(*)::int as n from buildsteps where build = any($1)', [[own, ownToo, dep1, dep2]])).rows[0].n).toBe(5);
  });

  it('a cached failure (8) without a failed build: own build fails as cached, rows have no propagatedFrom', async () => {
    const own = await queueBuild(db.pool, jobset.id, DRV);
    const [dep] = (await queueMany(1)) as [number];
    const ended = await withTransaction(db.pool, (c) =>
      finishBuildsFailed(c, failure({ stepStatus: 8, startTime: null, stopTime: 300, errorMsg: null, machine: '',
        builds: [{ id: own, own: true }, { id: dep, own: false }] })));
    expect(ended).toEqual([own, dep]);
    const { rows } = await db.pool.query(
      'select id, buildstatus, iscachedbuild, starttime, stoptime from builds where id = any($1) order by id', [[own, dep]]);
    // A finished build must have a start time: without one the stop time stands in.
    expect(rows).toEqual([
      { id: own, buildstatus: 1, iscachedbuild: 1, starttime: 300, stoptime: 300 },
      { id: dep, buildstatus: 2, iscachedbuild: 1, starttime: 300, stoptime: 300 },
    ]);
    const { rows: steps } = await db.pool.query(
      'select build, stepnr, status, propagatedfrom, errormsg from buildsteps where build = any($1) order by build', [[own, dep]]);
    expect(steps).toEqual([
      { build: own, stepnr: 1, status: 8, propagatedfrom: null, errormsg: null },
      { build: dep, stepnr: 1, status: 8, propagatedfrom: null, errormsg: null },
    ]);
  });

  it('refuses a status that is not a failure before writing anything', async () => {
    const [dep] = await queueMany(1);
    await expect(withTransaction(db.pool, (c) => finishBuildsFailed(c, failure({ stepStatus: 0, builds: [{ id: dep!, own: true }] }))))
      .rejects.toThrow(RangeError);
    expect((await db.pool.query('select finished from builds where id = $1', [dep])).rows[0].finished).toBe(0);
  });

  it('chunks: small chunks give the same result as one statement', async () => {
    const own = await queueBuild(db.pool, jobset.id, DRV);
    const deps = await queueMany(25);
    const ended = await withTransaction(db.pool, (c) =>
      finishBuildsFailed(c, failure({ failedBuildId: own, chunkSize: 4,
        builds: [{ id: own, own: true }, ...deps.map((id) => ({ id, own: false }))].reverse() })));
    expect(ended).toEqual([own, ...deps].sort((a, b) => a - b));
    const { rows } = await db.pool.query(
      `select b.id, b.buildstatus, s.stepnr, s.propagatedfrom from builds b left join buildsteps s on s.build = b.id
       where b.id = any($1) order by b.id`, [deps]);
    expect(rows).toEqual(deps.map((id) => ({ id, buildstatus: 2, stepnr: 1, propagatedfrom: own })));
  });

  it("keeps Hydra's NrBuilds count right, also with a concurrent finish while the batch runs", async () => {
    const count = async () => (await db.pool.query<{ count: number }>("select count from nrbuilds where what = 'finished'")).rows[0]!.count;
    const own = await queueBuild(db.pool, jobset.id, DRV);
    const deps = await queueMany(6);
    const [unrelated] = await queueMany(1);
    const before = await count();
    const tx = await db.pool.connect();
    const other = await db.pool.connect();
    try {
      await tx.query('begin');
      const ended = await finishBuildsFailed(tx, failure({ failedBuildId: own, chunkSize: 2,
        builds: [{ id: own, own: true }, ...deps.map((id) => ({ id, own: false }))] }));
      expect(ended).toHaveLength(7);
      // Readers outside the transaction still see the committed row.
      expect(await count()).toBe(before);
      let done = false;
      const concurrent = other
        .query('update builds set finished = 1, buildstatus = 4, starttime = 1, stoptime = 1 where id = $1', [unrelated])
        .then(() => (done = true));
      await new Promise((r) => setTimeout(r, 150));
      expect(done).toBe(false); // its trigger waits on the NrBuilds row
      await tx.query('commit');
      await concurrent;
    } finally {
      tx.release();
      other.release();
    }
    expect(await count()).toBe(before + 7 + 1);
    expect((await db.pool.query("select count(*)::int as n from nrbuilds where what <> 'finished'")).rows[0].n).toBe(0);
  });

  it('fails 20,000 dependent builds in one write, every row right', async () => {
    const own = await queueBuild(db.pool, jobset.id, DRV);
    const deps = await queueMany(20_000);
    // Some dependents already ended or already have steps.
    const finishedBefore = deps.filter((_, i) => i % 1000 === 7);
    await db.pool.query('update builds set finished = 1, buildstatus = 4, starttime = 1, stoptime = 1 where id = any($1)', [finishedBefore]);
    const withSteps = deps.filter((_, i) => i % 500 === 3);
    await db.pool.query(
      `insert into buildsteps (build, stepnr, type, drvpath, busy, status, starttime, stoptime)
       select id, n, 0, 'earlier', 0, 0, 1, 2 from unnest($1::int[]) id cross join generate_series(1, 3) n`, [withSteps]);

    const finishedCount = async () =>
      (await db.pool.query<{ what: string; count: number }>('select what, count from nrbuilds order by what')).rows;
    const countBefore = await finishedCount();
    const ended = await withTransaction(db.pool, (c) =>
      finishBuildsFailed(c, failure({
        failedBuildId: own, stepStatus: 1, system: 'x86_64-linux', outputs: [{ name: 'out', path: OUT }, { name: 'lib', path: null }],
        builds: [...deps.map((id) => ({ id, own: false })), { id: own, own: true }],
      })));

    const skipped = new Set(finishedBefore);
    const expected = [own, ...deps.filter((id) => !skipped.has(id))].sort((a, b) => a - b);
    expect(ended).toEqual(expected);
    // Hydra's counter of finished builds moved by exactly the builds ended, and its row is back.
    expect(await finishedCount()).toEqual([{ what: 'finished', count: countBefore[0]!.count + expected.length }]);

    const { rows: statuses } = await db.pool.query<{ buildstatus: number; finished: number; starttime: number; stoptime: number; n: number }>(
      `select buildstatus, finished, starttime, stoptime, count(*)::int as n from builds where id = any($1)
       group by 1, 2, 3, 4 order by 1`, [[own, ...deps]]);
    expect(statuses).toEqual([
      { buildstatus: 1, finished: 1, starttime: 100, stoptime: 200, n: 1 },
      { buildstatus: 2, finished: 1, starttime: 100, stoptime: 200, n: 20_000 - finishedBefore.length },
      { buildstatus: 4, finished: 1, starttime: 1, stoptime: 1, n: finishedBefore.length },
    ]);
    expect((await db.pool.query('select buildstatus from builds where id = $1', [own])).rows[0].buildstatus).toBe(1);

    // Exactly one propagated row per ended dependent, numbered after its earlier steps.
    const { rows: steps } = await db.pool.query<{ build: number; stepnr: number }>(
      `select build, stepnr from buildsteps
       where propagatedfrom = $1 and drvpath = $2 and status = 1 and busy = 0 and machine = 'ssh://b1'
         and errormsg = 'builder failed with exit code 1' and system = 'x86_64-linux' and type = 0
       order by build`, [own, DRV]);
    expect(steps.map((s) => s.build)).toEqual(expected.filter((id) => id !== own));
    const earlier = new Set(withSteps);
    for (const s of steps) expect(s.stepnr).toBe(earlier.has(s.build) ? 4 : 1);
    expect((await db.pool.query('select count(*)::int as n from buildsteps where build = $1', [own])).rows[0].n).toBe(0);
    const { rows: outs } = await db.pool.query(
      `select name, path, count(*)::int as n from buildstepoutputs o join buildsteps s using (build, stepnr)
       where s.propagatedfrom = $1 group by 1, 2 order by 1`, [own]);
    expect(outs).toEqual([
      { name: 'lib', path: null, n: steps.length },
      { name: 'out', path: OUT, n: steps.length },
    ]);
  });
});
