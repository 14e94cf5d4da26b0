import pg from 'pg';
import { describe, expect, it } from 'vitest';
import { createPool, withTransaction } from '../../src/db/pool.ts';
import { abortLeftoverSteps, finishStep, recordStep, setStepBusy, startStep } from '../../src/db/step-rows.ts';
import { BuildStatus, StepBusy, StepType } from '../../src/db/status.ts';
import { useTestDatabase } from '../helpers/db.ts';
import { queueBuild, useJobset } from '../helpers/hydra-rows.ts';

const DRV = '/nix/store/0000000000000000000000000000000a-hello.drv';
const OUT = '/nix/store/0000000000000000000000000000000b-hello';

describe('BuildSteps rows', () => {
  const db = useTestDatabase();
  const jobset = useJobset(db);

  async function steps(buildId: number) {
    const { rows } = await db.pool.query(
      `select stepnr, type, drvpath, busy, status, errormsg, starttime, stoptime, machine, system,
              propagatedfrom, overhead, timesbuilt, isnondeterministic, resolveddrvpath
       from buildsteps where build = $1 order by stepnr`,
      [buildId],
    );
    return rows;
  }

  async function stepOutputs(buildId: number) {
    const { rows } = await db.pool.query('select stepnr, name, path from buildstepoutputs where build = $1 order by stepnr, name', [buildId]);
    return rows;
  }

  it('startStep inserts a busy row with its outputs and numbers steps 1, 2, ...', async () => {
    const build = await queueBuild(db.pool, jobset.id, DRV);
    const first = await withTransaction(db.pool, (c) =>
      startStep(c, {
        buildId: build, drvPath: DRV, system: 'x86_64-linux', machine: 'ssh://b1', startTime: 1000,
        busy: StepBusy.Preparing, type: StepType.Build,
        outputs: [{ name: 'out', path: OUT }, { name: 'dev', path: null }],
      }),
    );
    const second = await withTransaction(db.pool, (c) =>
      startStep(c, {
        buildId: build, drvPath: DRV, system: 'x86_64-linux', machine: '', startTime: 1001,
        busy: StepBusy.Connecting, type: StepType.Substitution, outputs: [],
      }),
    );
    expect([first, second]).toEqual([1, 2]);
    expect(await steps(build)).toEqual([
      {
        stepnr: 1, type: 0, drvpath: DRV, busy: 1, status: null, errormsg: null, starttime: 1000, stoptime: null,
        machine: 'ssh://b1', system: 'x86_64-linux', propagatedfrom: null, overhead: null, timesbuilt: null,
        isnondeterministic: null, resolveddrvpath: null,
      },
      {
        stepnr: 2, type: 1, drvpath: DRV, busy: 10, status: null, errormsg: null, starttime: 1001, stoptime: null,
        machine: '', system: 'x86_64-linux', propagatedfrom: null, overhead: null, timesbuilt: null,
        isnondeterministic: null, resolveddrvpath: null,
      },
    ]);
    expect(await stepOutputs(build)).toEqual([
      { stepnr: 1, name: 'dev', path: null },
      { stepnr: 1, name: 'out', path: OUT },
    ]);
  });

  it('refuses to start a step that is not busy, or for a build that does not exist', async () => {
    const build = await queueBuild(db.pool, jobset.id, DRV);
    const base = { buildId: build, drvPath: DRV, system: null, machine: '', startTime: 1, type: StepType.Build, outputs: [] };
    await expect(withTransaction(db.pool, (c) => startStep(c, { ...base, busy: 0 }))).rejects.toThrow(RangeError);
    await expect(withTransaction(db.pool, (c) => startStep(c, { ...base, buildId: 999_999, busy: 1 }))).rejects.toThrow(/does not exist/);
    expect(await steps(build)).toEqual([]);
  });

  it('allocates distinct stepnrs 1..50 under 50 concurrent transactions on one build', async () => {
    const build = await queueBuild(db.pool, jobset.id, DRV);
    const pool = createPool(db.url, { max: 50 });
    try {
      const nrs = await Promise.all(
        Array.from({ length: 50 }, (_, i) =>
          withTransaction(pool, async (c) => {
            const nr = await startStep(c, {
              buildId: build, drvPath: `${DRV}-${i}`, system: 'x86_64-linux', machine: `m${i}`, startTime: 2000 + i,
              busy: StepBusy.Building, type: StepType.Build, outputs: [{ name: 'out', path: `${OUT}-${i}` }],
            });
            // Hold the lock a little so the transactions really overlap.
            await c.query('select pg_sleep(0.002)');
            return nr;
          }),
        ),
      );
      expect([...nrs].sort((a, b) => a - b)).toEqual(Array.from({ length: 50 }, (_, i) => i + 1));
    } finally {
      await pool.end();
    }
    const rows = await steps(build);
    expect(rows.map((r) => r.stepnr)).toEqual(Array.from({ length: 50 }, (_, i) => i + 1));
    // Each row carries its own caller's values and its own output.
    const outs = await stepOutputs(build);
    for (const r of rows) {
      const i = Number(r.machine.slice(1));
      expect(r.drvpath).toBe(`${DRV}-${i}`);
      expect(r.starttime).toBe(2000 + i);
      expect(outs.filter((o) => o.stepnr === r.stepnr)).toEqual([{ stepnr: r.stepnr, name: 'out', path: `${OUT}-${i}` }]);
    }
  });

  it('makes another connection wait for the build lock and then take the next stepnr', async () => {
    const build = await queueBuild(db.pool, jobset.id, DRV);
    const other = new pg.Client({ connectionString: db.url });
    await other.connect();
    try {
      await other.query('begin');
      const a = await startStep(other, {
        buildId: build, drvPath: DRV, system: null, machine: 'other', startTime: 1, busy: 1, type: 0, outputs: [],
      });
      let settled = false;
      const b = withTransaction(db.pool, (c) =>
        startStep(c, { buildId: build, drvPath: DRV, system: null, machine: 'pool', startTime: 2, busy: 1, type: 0, outputs: [] }),
      ).finally(() => (settled = true));
      await new Promise((r) => setTimeout(r, 200));
      expect(settled).toBe(false); // blocked on the Builds row lock
      await other.query('commit');
      expect([a, await b]).toEqual([1, 2]);
    } finally {
      await other.end();
    }
    expect((await steps(build)).map((r) => [r.stepnr, r.machine])).toEqual([[1, 'other'], [2, 'pool']]);
  });

  it('setStepBusy changes only a running row; finishStep records the result and CA output paths', async () => {
    const build = await queueBuild(db.pool, jobset.id, DRV);
    const nr = await withTransaction(db.pool, (c) =>
      startStep(c, {
        buildId: build, drvPath: DRV, system: 'aarch64-linux', machine: 'b2', startTime: 500, busy: 1, type: 0,
        outputs: [{ name: 'out', path: null }],
      }),
    );
    expect(await setStepBusy(db.pool, build, nr, StepBusy.Building)).toBe(true);
    expect((await steps(build))[0]).toMatchObject({ busy: 30, status: null });
    const finished = await withTransaction(db.pool, (c) =>
      finishStep(c, {
        buildId: build, stepnr: nr, status: BuildStatus.Success, errorMsg: null, startTime: 501, stopTime: 560,
        machine: 'b2', overhead: 1234, timesBuilt: 1, isNonDeterministic: false,
        outputs: [{ name: 'out', path: OUT }], logFile: '/var/lib/hydra/build-logs/aa/bb.drv',
      }),
    );
    expect(finished).toBe(true);
    expect(await steps(build)).toEqual([
      {
        stepnr: 1, type: 0, drvpath: DRV, busy: 0, status: 0, errormsg: null, starttime: 501, stoptime: 560,
        machine: 'b2', system: 'aarch64-linux', propagatedfrom: null, overhead: 1234, timesbuilt: 1,
        isnondeterministic: false, resolveddrvpath: null,
      },
    ]);
    expect(await stepOutputs(build)).toEqual([{ stepnr: 1, name: 'out', path: OUT }]);
    // A finished row is no longer "running".
    expect(await setStepBusy(db.pool, build, nr, StepBusy.ReceivingOutputs)).toBe(false);
    expect((await steps(build))[0]).toMatchObject({ busy: 0, status: 0 });
    // No such step.
    expect(
      await withTransaction(db.pool, (c) =>
        finishStep(c, {
          buildId: build, stepnr: 99, status: 1, errorMsg: 'x', startTime: 1, stopTime: 2, machine: '', overhead: null,
          timesBuilt: null, isNonDeterministic: null, logFile: null,
        }),
      ),
    ).toBe(false);
  });

  it('finishStep with a failure keeps the error and a non-deterministic flag', async () => {
    const build = await queueBuild(db.pool, jobset.id, DRV);
    const nr = await withTransaction(db.pool, (c) =>
      startStep(c, { buildId: build, drvPath: DRV, system: 'x86_64-linux', machine: 'b', startTime: 10, busy: 30, type: 0, outputs: [] }),
    );
    await withTransaction(db.pool, (c) =>
      finishStep(c, {
        buildId: build, stepnr: nr, status: BuildStatus.NotDeterministic, errorMsg: 'output differs', startTime: 10,
        stopTime: 99, machine: 'b', overhead: 0, timesBuilt: 2, isNonDeterministic: true, logFile: '',
      }),
    );
    expect((await steps(build))[0]).toMatchObject({
      busy: 0, status: 12, errormsg: 'output differs', starttime: 10, stoptime: 99, timesbuilt: 2, isnondeterministic: true,
    });
  });

  it('recordStep inserts finished rows: cached failure, propagated failure, resolved CA step', async () => {
    const failedUnder = await queueBuild(db.pool, jobset.id, DRV);
    const build = await queueBuild(db.pool, jobset.id, DRV);
    const started = await withTransaction(db.pool, (c) =>
      startStep(c, { buildId: build, drvPath: DRV, system: null, machine: '', startTime: 1, busy: 1, type: 0, outputs: [] }),
    );
    const cached = await withTransaction(db.pool, (c) =>
      recordStep(c, {
        buildId: build, drvPath: DRV, status: BuildStatus.CachedFailure, propagatedFrom: failedUnder, system: 'x86_64-linux',
        outputs: [{ name: 'out', path: OUT }],
      }),
    );
    const resolved = await withTransaction(db.pool, (c) =>
      recordStep(c, {
        buildId: build, drvPath: DRV, status: BuildStatus.Resolved, startTime: 70, stopTime: 70, machine: 'local',
        resolvedDrvPath: '/nix/store/0000000000000000000000000000000c-hello.drv',
      }),
    );
    expect([started, cached, resolved]).toEqual([1, 2, 3]);
    const rows = await steps(build);
    expect(rows[1]).toEqual({
      stepnr: 2, type: 0, drvpath: DRV, busy: 0, status: 8, errormsg: null, starttime: null, stoptime: null, machine: '',
      system: 'x86_64-linux', propagatedfrom: failedUnder, overhead: null, timesbuilt: null, isnondeterministic: null,
      resolveddrvpath: null,
    });
    // resolvedDrvPath is stored without the store directory.
    expect(rows[2]).toMatchObject({ stepnr: 3, busy: 0, status: 13, starttime: 70, stoptime: 70, machine: 'local',
      resolveddrvpath: '0000000000000000000000000000000c-hello.drv' });
    expect(await stepOutputs(build)).toEqual([{ stepnr: 2, name: 'out', path: OUT }]);
  });

  it('the check constraint holds: status 13 needs resolvedDrvPath and only 13 may have one', async () => {
    const build = await queueBuild(db.pool, jobset.id, DRV);
    await expect(withTransaction(db.pool, (c) => recordStep(c, { buildId: build, drvPath: DRV, status: 13 }))).rejects.toMatchObject({
      code: '23514',
    });
    await expect(
      withTransaction(db.pool, (c) => recordStep(c, { buildId: build, drvPath: DRV, status: 1, resolvedDrvPath: 'x.drv' })),
    ).rejects.toMatchObject({ code: '23514' });
    expect(await steps(build)).toEqual([]);
    // The same rule when a running step ends as resolved.
    const nr = await withTransaction(db.pool, (c) =>
      startStep(c, { buildId: build, drvPath: DRV, system: null, machine: '', startTime: 1, busy: 1, type: 0, outputs: [] }));
    const finish = { buildId: build, stepnr: nr, status: 13, errorMsg: null, startTime: 1, stopTime: 2, machine: '',
      overhead: null, timesBuilt: null, isNonDeterministic: null, logFile: null };
    await expect(withTransaction(db.pool, (c) => finishStep(c, finish))).rejects.toMatchObject({ code: '23514' });
    await withTransaction(db.pool, (c) => finishStep(c, { ...finish, resolvedDrvPath: '/nix/store/0000000000000000000000000000000e-r.drv' }));
    expect(await steps(build)).toMatchObject([{ stepnr: 1, busy: 0, status: 13, resolveddrvpath: '0000000000000000000000000000000e-r.drv' }]);
  });

  it('abortLeftoverSteps aborts every busy row and nothing else', async () => {
    const build = await queueBuild(db.pool, jobset.id, DRV);
    await db.pool.query(
      `insert into buildsteps (build, stepnr, type, drvpath, busy, status, errormsg, starttime, stoptime)
       values ($1, 1, 0, 'a', 30, null, null, 5, null),
              ($1, 2, 0, 'b', 1, null, 'kept', 6, null),
              ($1, 3, 0, 'c', 0, 0, null, 7, 8)`,
      [build],
    );
    // Rows left busy from other builds of this file's earlier tests count too.
    const { rows: before } = await db.pool.query<{ n: number }>('select count(*)::int as n from buildsteps where busy != 0');
    expect(await abortLeftoverSteps(db.pool, 9999)).toBe(before[0]!.n);
    expect((await steps(build)).map((r) => [r.stepnr, r.busy, r.status, r.stoptime, r.errormsg])).toEqual([
      [1, 0, 3, 9999, 'runner restarted'],
      [2, 0, 3, 9999, 'kept'],
      [3, 0, 0, 8, null],
    ]);
    expect(await abortLeftoverSteps(db.pool, 10000)).toBe(0);
  });
});
