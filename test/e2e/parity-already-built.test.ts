import { randomBytes } from 'node:crypto';
import { existsSync, mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { LocalNixBuilder } from '../../src/builder/local-builder.ts';
import { BinaryCache } from '../../src/cache/binary-cache.ts';
import { LocalNixStore } from '../../src/nix/local-store.ts';
import { OutputPublisher } from '../../src/publish/output-publisher.ts';
import { WorkerPool } from '../../src/workers/pool.ts';
import { generateKey } from '../cache/fixtures.ts';
import { createTestDatabase, type TestDatabase } from '../helpers/db.ts';
import { createJobset, queueBuild } from '../helpers/hydra-rows.ts';
import { instantiate, MK_DRV } from '../helpers/nix.ts';
import { machineRecord, quietLog, startRuntime, waitFor } from '../helpers/runtime.ts';

/**
 * Issue 16 point 5: a build queued when its outputs are already valid ends
 * as cached with what Hydra copies from the earlier build of those outputs
 * (Rust runner subprojects/hydra-queue-runner/src/state/mod.rs:3376-3450
 * handle_cached_build / get_build_output_cached, SQL in
 * subprojects/crates/db/src/connection.rs:267-330; C++ at cf9f38e4
 * queue-monitor.cc:236-252 and :643-700): status (0, or 6 when that build
 * failed with output), size, closure size, release name, BuildProducts and
 * BuildMetrics; its outputs are GC roots (C++ queue-monitor.cc:242-244
 * addRoot) and in every destination cache (C++ queue-monitor.cc:485-530
 * copyClosure to destStore). Real PostgreSQL with Hydra's schema, real Nix
 * builds, real directory caches.
 */
describe('a build queued with its outputs already valid', () => {
  let db: TestDatabase;
  let jobset: number;
  const store = new LocalNixStore();
  const dir = mkdtempSync(join(tmpdir(), 'hydrant-already-built-'));
  const pool = new WorkerPool({ threads: 1 });
  beforeAll(async () => {
    db = await createTestDatabase();
    jobset = await createJobset(db.pool, 'already', 'main');
  });
  afterAll(async () => {
    await pool.close();
    await db.drop();
  });

  const build = async (id: number) =>
    (await db.pool.query('select finished, buildstatus, iscachedbuild, size, closuresize, releasename from builds where id = $1', [id])).rows[0];
  const products = async (id: number) =>
    (await db.pool.query('select productnr, type, subtype, filesize, sha256hash, path, name, defaultpath from buildproducts where build = $1 order by productnr', [id])).rows;
  const metrics = async (id: number) => (await db.pool.query('select name, unit, value, job from buildmetrics where build = $1 order by name', [id])).rows;
  const finished = async (ids: number[]) => (await db.pool.query('select count(*)::int n from builds where id = any($1) and finished = 1', [ids])).rows[0].n === ids.length;

  it('copies products, metrics, sizes, release name and status from the earlier build, and roots and publishes its outputs in every cache', async () => {
    const n = randomBytes(4).toString('hex');
    const support = (extra: string) =>
      `/bin/mkdir -p $out/nix-support; echo hello-${n} > $out/doc.txt; ` +
      `echo \\"doc readme $out/doc.txt\\" > $out/nix-support/hydra-build-products; ` +
      `echo \\"runtime 42.5 s\\" > $out/nix-support/hydra-metrics; echo \\"lines 7\\" >> $out/nix-support/hydra-metrics; ` +
      `echo rel-${n}-1.0 > $out/nix-support/hydra-release-name; ${extra}`;
    const [good, failing] = await instantiate(
      `let ${MK_DRV} in {
        good = mk { name = "good-${n}"; script = "${support('')}"; };
        failing = mk { name = "failing-${n}"; script = "${support('/bin/touch $out/nix-support/failed')}"; };
      }`,
      ['good', 'failing'],
    );
    const key = await generateKey(dir, 'already-1');
    const cacheA = await BinaryCache.open(`file://${join(dir, 'cache-a')}?compression=none&secret-key=${key.secretFile}`, pool);
    const rootsA = join(dir, 'roots-a');
    const queue = async (drv: string, job: string) => {
      const d = await store.readDerivation(drv);
      return { id: await queueBuild(db.pool, jobset, drv, job, d.system, d.outputs), out: d.outputs[0]!.path! };
    };

    // The first builds of both derivations, built for real.
    const first = { good: await queue(good!, 'good'), failing: await queue(failing!, 'failing') };
    const run1 = await startRuntime(db.pool, store, {}, new OutputPublisher({ pool, caches: [cacheA], rootsDir: rootsA, log: quietLog }));
    try {
      run1.runtime.scheduler.addMachine(machineRecord('local', { maxJobs: 2 }), new LocalNixBuilder({ hydraDataDir: dir }));
      await waitFor(() => finished([first.good.id, first.failing.id]), 60_000, 'the first builds');
      await run1.runtime.scheduler.settle();
    } finally {
      await run1.runtime.stop(0);
    }
    const built = await build(first.good.id);
    expect(built).toMatchObject({ buildstatus: 0, iscachedbuild: 0, releasename: `rel-${n}-1.0` });
    expect(Number(built.size)).toBeGreaterThan(0);
    expect(await build(first.failing.id)).toMatchObject({ buildstatus: 6 });
    expect(await products(first.good.id)).toHaveLength(1);
    expect((await metrics(first.good.id)).map((m) => m.name)).toEqual(['lines', 'runtime']);

    // Queued again (another job), now with the outputs valid; a second cache that has nothing, and fresh roots.
    const cacheB = await BinaryCache.open(`file://${join(dir, 'cache-b')}?compression=none&secret-key=${key.secretFile}`, pool);
    const rootsB = join(dir, 'roots-b');
    const again = { good: await queue(good!, 'good-again'), failing: await queue(failing!, 'failing-again') };
    const run2 = await startRuntime(db.pool, store, {}, new OutputPublisher({ pool, caches: [cacheA, cacheB], rootsDir: rootsB, log: quietLog }));
    try {
      await waitFor(() => finished([again.good.id, again.failing.id]), 60_000, 'the builds queued already built');
      await run2.runtime.scheduler.settle();
      expect(run2.runtime.scheduler.graph.steps.size).toBe(0);
    } finally {
      await run2.runtime.stop(0);
    }
    // Nothing built: no step rows (Rust handle_cached_build writes none).
    expect((await db.pool.query('select count(*)::int n from buildsteps where build = any($1)', [[again.good.id, again.failing.id]])).rows[0].n).toBe(0);
    // Rust mark_succeeded_build(…, is_cached = true, now, now) with the earlier build's BuildOutput:
    // status 0 (6 when it failed with output, `res.failed`), size, closureSize, releaseName.
    expect(await build(again.good.id)).toEqual({ ...built, iscachedbuild: 1 });
    expect(await build(again.failing.id)).toMatchObject({ finished: 1, buildstatus: 6, iscachedbuild: 1, releasename: `rel-${n}-1.0` });
    // Products and metrics as the earlier build's (C++ queue-monitor.cc:662-700); metrics keep this build's job.
    expect(await products(again.good.id)).toEqual(await products(first.good.id));
    expect(await metrics(again.good.id)).toEqual((await metrics(first.good.id)).map((m) => ({ ...m, job: 'good-again' })));
    // GC roots (C++ queue-monitor.cc:242-244) and the outputs in both caches (C++ queue-monitor.cc:487-530).
    for (const b of [again.good, again.failing]) {
      expect(existsSync(join(rootsB, b.out.slice('/nix/store/'.length)))).toBe(true);
      for (const c of ['cache-a', 'cache-b']) expect(existsSync(join(dir, c, `${b.out.slice(11, 43)}.narinfo`))).toBe(true);
    }
  }, 180_000);
});
