import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { withTransaction } from '../../src/db/pool.ts';
import { PgSchedulerDb } from '../../src/db/scheduler-db.ts';
import { finishStep, startStep } from '../../src/db/step-rows.ts';
import { StepBusy, StepType } from '../../src/db/status.ts';
import { buildHistory } from '../../src/status/build-history.ts';
import { machineDiagrams } from '../../src/status/machine-diagrams.ts';
import { createTestDatabase, type TestDatabase } from '../helpers/db.ts';
import { createJobset, queueBuild } from '../helpers/hydra-rows.ts';

const ORIG = '/nix/store/0000000000000000000000000000000a-ca-b.drv';
const RESOLVED = '/nix/store/0000000000000000000000000000000c-ca-b.drv';
const OUT = '/nix/store/0000000000000000000000000000000d-ca-b';

describe('a finished build with a resolved (content-addressed) step, from its rows', () => {
  let db: TestDatabase;
  beforeAll(async () => {
    db = await createTestDatabase();
  });
  afterAll(() => db.drop());

  it('links the status-13 row to the row of the derivation it was resolved to', async () => {
    const build = await queueBuild(db.pool, await createJobset(db.pool), ORIG);
    const sdb = new PgSchedulerDb(db.pool);
    const { stepnr: original } = await sdb.stepResolved({ buildId: build, drvPath: ORIG, resolvedDrvPath: RESOLVED, system: 'x86_64-linux', machine: '', time: 100, outputs: [{ name: 'out', path: null }] });
    const resolved = await withTransaction(db.pool, (c) =>
      startStep(c, { buildId: build, drvPath: RESOLVED, system: 'x86_64-linux', machine: 'm1', startTime: 300, busy: StepBusy.Building, type: StepType.Build, outputs: [{ name: 'out', path: null }] }),
    );
    const running = await buildHistory(db.pool, build, 100, '/nix/store');
    expect(running!.steps.find((s) => s.stepnr === resolved)).toMatchObject({ state: 'building', statusName: 'building', machine: 'm1' });
    await withTransaction(db.pool, (c) =>
      finishStep(c, { buildId: build, stepnr: resolved, status: 0, errorMsg: null, startTime: 300, stopTime: 310, machine: 'm1', overhead: null, timesBuilt: 1, isNonDeterministic: false, logFile: null, outputs: [{ name: 'out', path: OUT }] }),
    );

    const h = await buildHistory(db.pool, build, 100, '/nix/store');
    expect(h!.build).toMatchObject({ id: build, finished: false, failedStep: null });
    expect(h!.steps.map((s) => [s.stepnr, s.state])).toEqual([
      [original, 'resolved'],
      [resolved, 'succeeded'],
    ]);
    // resolvedDrvPath is stored without the store directory; the view gives the full path and the row it names.
    expect(h!.steps[0]).toMatchObject({ statusName: 'resolved', resolvedDrvPath: RESOLVED, resolvedTo: resolved });
    expect(h!.steps[1]).toMatchObject({ resolvedTo: null, outputs: [{ name: 'out', path: OUT }], stopTime: 310 });
    expect(await buildHistory(db.pool, 999_999, 100, '/nix/store')).toBeNull();
    // Limited: the view says it was cut.
    expect(await buildHistory(db.pool, build, 1, '/nix/store')).toMatchObject({ stepCount: 1, truncated: true });
  });

  it("the step diagram the page draws has the step machine's RESOLVE and ALREADY_BUILT moves", () => {
    const { transitions } = machineDiagrams().step;
    expect(transitions).toContainEqual({ from: 'runnable', event: 'RESOLVE', to: 'resolved' });
    expect(transitions).toContainEqual({ from: 'runnable', event: 'ALREADY_BUILT', to: 'succeeded' });
  });
});
