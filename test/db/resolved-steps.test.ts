import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { withTransaction } from '../../src/db/pool.ts';
import { PgSchedulerDb } from '../../src/db/scheduler-db.ts';
import { finishStep, startStep } from '../../src/db/step-rows.ts';
import { BuildStatus, StepBusy, StepType } from '../../src/db/status.ts';
import { createTestDatabase, type TestDatabase } from '../helpers/db.ts';
import { createJobset, queueBuild } from '../helpers/hydra-rows.ts';

const ORIG = '/nix/store/0000000000000000000000000000000a-ca-b.drv';
const RESOLVED = '/nix/store/0000000000000000000000000000000c-ca-b.drv';
const OUT = '/nix/store/0000000000000000000000000000000d-ca-b';

describe('status-13 rows and realised outputs', () => {
  let db: TestDatabase;
  let jobsetId: number;
  beforeAll(async () => {
    db = await createTestDatabase();
    jobsetId = await createJobset(db.pool);
  });
  afterAll(() => db.drop());

  it('a resolved step is recorded once per build and derivation, even when resolved again concurrently', async () => {
    const sdb = new PgSchedulerDb(db.pool);
    const build = await queueBuild(db.pool, jobsetId, ORIG);
    const a = { buildId: build, drvPath: ORIG, resolvedDrvPath: RESOLVED, system: 'x86_64-linux', machine: '', time: 100, outputs: [{ name: 'out', path: null }] };
    const results = await Promise.all([sdb.stepResolved(a), sdb.stepResolved(a), sdb.stepResolved({ ...a, time: 200 })]);
    expect(results.filter((r) => r.inserted)).toHaveLength(1);
    expect(new Set(results.map((r) => r.stepnr)).size).toBe(1);
    const rows = (await db.pool.query('select stepnr, drvpath, status, busy, resolveddrvpath, starttime, stoptime from buildsteps where build = $1', [build])).rows;
    expect(rows).toEqual([{ stepnr: results[0]!.stepnr, drvpath: ORIG, status: BuildStatus.Resolved, busy: 0, resolveddrvpath: RESOLVED.slice('/nix/store/'.length), starttime: rows[0].starttime, stoptime: rows[0].stoptime }]);
    expect((await db.pool.query('select name, path from buildstepoutputs where build = $1', [build])).rows).toEqual([{ name: 'out', path: null }]);

    // Nothing built yet: no realised output. Once the resolved derivation's step succeeded, the original's output is its.
    expect(await sdb.realisedOutputs([ORIG])).toEqual([]);
    const nr = await withTransaction(db.pool, (c) =>
      startStep(c, { buildId: build, drvPath: RESOLVED, system: 'x86_64-linux', machine: 'm', startTime: 300, busy: StepBusy.Building, type: StepType.Build, outputs: [{ name: 'out', path: null }] }),
    );
    await withTransaction(db.pool, (c) =>
      finishStep(c, { buildId: build, stepnr: nr, status: 0, errorMsg: null, startTime: 300, stopTime: 310, machine: 'm', overhead: null, timesBuilt: 1, isNonDeterministic: false, logFile: null, outputs: [{ name: 'out', path: OUT }] }),
    );
    expect(await sdb.realisedOutputs([ORIG])).toEqual([{ drvPath: ORIG, name: 'out', path: OUT }]);
    expect(await sdb.realisedOutputs([RESOLVED])).toEqual([{ drvPath: RESOLVED, name: 'out', path: OUT }]);
    // Another build's resolution of the same derivation is its own row.
    const other = await queueBuild(db.pool, jobsetId, ORIG);
    expect((await sdb.stepResolved({ ...a, buildId: other })).inserted).toBe(true);
  });

  it('a resolved derivation failed before is found by its permanent failures only, the newest first', async () => {
    const sdb = new PgSchedulerDb(db.pool);
    const drv = '/nix/store/0000000000000000000000000000000e-ca-f.drv';
    const build = await queueBuild(db.pool, jobsetId, drv);
    const step = async (status: number, t: number) => {
      const nr = await withTransaction(db.pool, (c) =>
        startStep(c, { buildId: build, drvPath: drv, system: 'x86_64-linux', machine: 'm', startTime: t, busy: StepBusy.Building, type: StepType.Build, outputs: [{ name: 'out', path: null }] }),
      );
      await withTransaction(db.pool, (c) =>
        finishStep(c, { buildId: build, stepnr: nr, status, errorMsg: 'x', startTime: t, stopTime: t + 1, machine: 'm', overhead: null, timesBuilt: 1, isNonDeterministic: false, logFile: null, outputs: [] }),
      );
    };
    expect(await sdb.failedBefore(drv)).toBeNull();
    // Aborted (3) and cancelled (4) attempts say nothing about the derivation.
    await step(BuildStatus.Aborted, 100);
    await step(4, 110);
    expect(await sdb.failedBefore(drv)).toBeNull();
    await step(BuildStatus.Failed, 120);
    await step(BuildStatus.TimedOut, 130);
    expect(await sdb.failedBefore(drv)).toEqual({ build, status: BuildStatus.TimedOut });
    expect(await sdb.failedBefore(drv.replace('ca-f', 'ca-g'))).toBeNull();
  });
});
