import { randomBytes } from 'node:crypto';
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { LocalNixBuilder } from '../../src/builder/local-builder.ts';
import { LocalNixStore } from '../../src/nix/local-store.ts';
import { createTestDatabase, type TestDatabase } from '../helpers/db.ts';
import { createJobset, queueBuild } from '../helpers/hydra-rows.ts';
import { instantiate, MK_DRV } from '../helpers/nix.ts';
import { machineRecord, startRuntime, waitFor } from '../helpers/runtime.ts';

/**
 * Issue 16 point 11: determinism checks as Hydra's C++ queue runner (at
 * cf9f38e4) requests them; the Rust runner has none (its proto leaves
 * is_deterministic/enforce_determinism commented out and it writes
 * timesBuilt null). A derivation with `isDetermistic = "1"`
 * (queue-monitor.cc:463) is built once more and must not differ
 * (builder.cc:102 repeats = 1; build-remote.cc:343-344 repeats and
 * enforce-determinism); a jobset in `jobsetRepeats` (`xxx-jobset-repeats`,
 * hydra-queue-runner.cc:833-838) gets its steps built N more times
 * (builder.cc:133-138). A difference under enforcement is status 12
 * (build-remote.cc:407-410, cached in FailedPaths); BuildSteps get
 * timesBuilt and isNonDeterministic (hydra-queue-runner.cc:350-357).
 * Real PostgreSQL with Hydra's schema, real Nix builds whose outputs are
 * random (/proc/sys/kernel/random/uuid).
 */
describe('determinism checks', () => {
  let db: TestDatabase;
  const store = new LocalNixStore();
  const dir = mkdtempSync(join(tmpdir(), 'hydrant-determinism-'));
  beforeAll(async () => {
    db = await createTestDatabase();
  });
  afterAll(() => db.drop());

  const build = async (id: number) => (await db.pool.query('select finished, buildstatus, iscachedbuild from builds where id = $1', [id])).rows[0];
  const steps = async (id: number) =>
    (await db.pool.query('select status, timesbuilt, isnondeterministic, propagatedfrom from buildsteps where build = $1 order by stepnr', [id])).rows;

  it('builds again as asked, fails a non-deterministic derivation that asks for it with 12, and records rounds and differences', async () => {
    const n = randomBytes(4).toString('hex');
    const random = 'read x < /proc/sys/kernel/random/uuid; echo $x > $out';
    const attrs = ['randomChecked', 'usesRandomChecked', 'randomInRepeated', 'sameInRepeated', 'sameChecked', 'plain'];
    const drvs = await instantiate(
      `let ${MK_DRV}
        randomChecked = mk { name = "random-checked-${n}"; script = "${random}"; extra = { isDetermistic = "1"; }; };
      in {
        inherit randomChecked;
        usesRandomChecked = mk { name = "uses-random-checked-${n}"; script = "/bin/cat \${randomChecked} > $out"; };
        randomInRepeated = mk { name = "random-repeated-${n}"; script = "${random}"; };
        sameInRepeated = mk { name = "same-repeated-${n}"; script = "echo same > $out"; };
        sameChecked = mk { name = "same-checked-${n}"; script = "echo same > $out"; extra = { isDetermistic = "1"; }; };
        plain = mk { name = "plain-${n}"; script = "${random}"; };
      }`,
      attrs,
    );
    const drv = Object.fromEntries(attrs.map((a, i) => [a, drvs[i]!]));
    const checked = await createJobset(db.pool, 'det', 'checked');
    const repeated = await createJobset(db.pool, 'det', 'repeated');
    const queue = async (jobset: number, a: string) => {
      const d = await store.readDerivation(drv[a]!);
      return queueBuild(db.pool, jobset, drv[a]!, a, d.system, d.outputs);
    };
    const id: Record<string, number> = {};
    for (const a of ['randomChecked', 'usesRandomChecked', 'sameChecked', 'plain']) id[a] = await queue(checked, a);
    for (const a of ['randomInRepeated', 'sameInRepeated']) id[a] = await queue(repeated, a);

    // No machine until every build is loaded: their steps wait (an hour before "unsupported").
    const { runtime } = await startRuntime(db.pool, store, { jobsetRepeats: ['det:repeated:2', 'other:jobset:5'], maxUnsupportedTimeInS: 3600 });
    try {
      // Every build is in the graph before a machine can build randomChecked: usesRandomChecked loaded after
      // randomChecked failed would be a cached failure (status 2, as in Hydra), not a dependent given its 12.
      await runtime.initialLoad;
      expect(Object.values(id).filter((b) => !runtime.scheduler.graph.builds.has(b))).toEqual([]);
      runtime.scheduler.addMachine(machineRecord('local', { maxJobs: 3 }), new LocalNixBuilder({ hydraDataDir: dir }));
      await waitFor(async () => (await db.pool.query('select count(*)::int n from builds where finished = 0')).rows[0].n === 0, 120_000, 'builds to finish');
      await runtime.scheduler.settle();
    } finally {
      await runtime.stop(0);
    }

    // isDetermistic = "1": built twice, differed, enforced -> 12 (build-remote.cc:407-410), timesBuilt 2 and
    // isNonDeterministic true (hydra-queue-runner.cc:356-357); its dependent gets 12 too (builder.cc:458,
    // a status other than 1 passes to dependents) with a propagated row.
    expect(await build(id.randomChecked!)).toMatchObject({ finished: 1, buildstatus: 12 });
    expect(await steps(id.randomChecked!)).toEqual([{ status: 12, timesbuilt: 2, isnondeterministic: true, propagatedfrom: null }]);
    expect(await build(id.usesRandomChecked!)).toMatchObject({ buildstatus: 12 });
    expect(await steps(id.usesRandomChecked!)).toEqual([{ status: 12, timesbuilt: null, isnondeterministic: null, propagatedfrom: id.randomChecked }]);
    // canCache (build-remote.cc:410): its outputs are FailedPaths.
    const out = (await store.readDerivation(drv.randomChecked!)).outputs[0]!.path!;
    expect((await db.pool.query('select count(*)::int n from failedpaths where path = $1', [out])).rows[0].n).toBe(1);

    // The same derivation checked and deterministic: succeeds, built twice, no difference.
    expect(await build(id.sameChecked!)).toMatchObject({ buildstatus: 0 });
    expect(await steps(id.sameChecked!)).toEqual([{ status: 0, timesbuilt: 2, isnondeterministic: false, propagatedfrom: null }]);

    // jobsetRepeats det:repeated:2: up to three rounds, not enforced (the derivation does not ask for it): a random
    // output succeeds, recorded as non-deterministic. Nix stops at the first round that differs (its
    // BuildResult.timesBuilt, what the serve protocol reports to Hydra, is 2 then).
    expect(await build(id.randomInRepeated!)).toMatchObject({ buildstatus: 0 });
    expect(await steps(id.randomInRepeated!)).toEqual([{ status: 0, timesbuilt: 2, isnondeterministic: true, propagatedfrom: null }]);
    expect(await steps(id.sameInRepeated!)).toEqual([{ status: 0, timesbuilt: 3, isnondeterministic: false, propagatedfrom: null }]);

    // No check asked: built once; isNonDeterministic only written for more than one round (hydra-queue-runner.cc:357).
    expect(await build(id.plain!)).toMatchObject({ buildstatus: 0 });
    expect(await steps(id.plain!)).toEqual([{ status: 0, timesbuilt: 1, isnondeterministic: null, propagatedfrom: null }]);
  }, 180_000);
});
