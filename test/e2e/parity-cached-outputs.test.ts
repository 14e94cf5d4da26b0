import { createHash, randomBytes } from 'node:crypto';
import { existsSync, mkdtempSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { LocalNixBuilder } from '../../src/builder/local-builder.ts';
import { LocalNixStore } from '../../src/nix/local-store.ts';
import { OutputPublisher } from '../../src/publish/output-publisher.ts';
import { WorkerPool } from '../../src/workers/pool.ts';
import { createTestDatabase, type TestDatabase } from '../helpers/db.ts';
import { createJobset, queueBuild } from '../helpers/hydra-rows.ts';
import { InProcessRunner } from '../helpers/in-process-runner.ts';
import { instantiate, MK_DRV, realise, runNix, runNixLines } from '../helpers/nix.ts';
import { generateKey } from '../cache/fixtures.ts';
import { machineRecord, quietLog, startRuntime, waitFor } from '../helpers/runtime.ts';

/**
 * A build queued with every output valid and no earlier build of those
 * outputs: Hydra reads what it writes from the outputs themselves (Rust
 * runner state/mod.rs get_build_output_cached → BuildOutput::new or
 * cached_output.rs build_output_from_cache; C++ getBuildOutputCached →
 * getBuildOutput) and writes it with mark_succeeded_build as for a built
 * step: status 0 (6 with nix-support/failed), size, closure size, release
 * name, BuildProducts, BuildMetrics, BuildOutputs. Real PostgreSQL with
 * Hydra's schema, real Nix.
 */
describe('a build queued already built, with no earlier build of its outputs', () => {
  let normal: TestDatabase;
  let cached: TestDatabase;
  const store = new LocalNixStore();
  const dir = mkdtempSync(join(tmpdir(), 'hydrant-cached-outputs-'));
  const pool = new WorkerPool({ threads: 1 });
  beforeAll(async () => {
    [normal, cached] = await Promise.all([createTestDatabase(), createTestDatabase()]);
    await Promise.all([createJobset(normal.pool, 'cached', 'main'), createJobset(cached.pool, 'cached', 'main')]);
  });
  afterAll(async () => {
    await pool.close();
    await Promise.all([normal?.drop(), cached?.drop()]);
  });

  const jobsetId = async (db: TestDatabase) => (await db.pool.query<{ id: number }>("select id from jobsets where name = 'main'")).rows[0]!.id;
  const queue = async (db: TestDatabase, drv: string, job: string) => {
    const d = await store.readDerivation(drv);
    return queueBuild(db.pool, await jobsetId(db), drv, job, d.system, d.outputs);
  };
  const finished = async (db: TestDatabase, ids: number[]) =>
    (await db.pool.query('select count(*)::int n from builds where id = any($1) and finished = 1', [ids])).rows[0].n === ids.length;
  /** The rows Hydra writes for a finished build, without its id and times. */
  const rows = async (db: TestDatabase, id: number) => ({
    build: (await db.pool.query('select finished, buildstatus, iscachedbuild, size::float8, closuresize::float8, releasename from builds where id = $1', [id])).rows[0],
    outputs: (await db.pool.query('select name, path from buildoutputs where build = $1 order by name', [id])).rows,
    products: (await db.pool.query('select productnr, type, subtype, filesize::float8, sha256hash, path, name, defaultpath from buildproducts where build = $1 order by productnr', [id])).rows,
    metrics: (await db.pool.query('select name, unit, value, project, jobset, job from buildmetrics where build = $1 order by name', [id])).rows,
    steps: (await db.pool.query('select count(*)::int n from buildsteps where build = $1', [id])).rows[0].n,
  });
  /** Ends the queued builds `ids` of `db` with a runtime that has `machine` (none: nothing can build). */
  const run = async (db: TestDatabase, ids: number[], machine?: LocalNixBuilder) => {
    const { runtime } = await startRuntime(db.pool, store, {}, new OutputPublisher({ pool, caches: [], rootsDir: join(dir, `roots-${db.name}`), log: quietLog }));
    try {
      if (machine) runtime.scheduler.addMachine(machineRecord('local', { maxJobs: 2 }), machine);
      await waitFor(() => finished(db, ids), 60_000, 'the builds');
      await runtime.scheduler.settle();
    } finally {
      await runtime.stop(0);
    }
  };
  /** out (with nix-support) and dev (referring to out) on top of a dependency: the joint closure counts out once. */
  const expr = (n: string) => {
    const support = (extra: string) =>
      `/bin/mkdir -p $out/nix-support $out/share $dev; echo hello-${n} > $out/share/doc.txt; echo $out > $dev/ref; echo $dep > $out/dep-ref; ` +
      `echo \\"doc readme $out/share/doc.txt\\" > $out/nix-support/hydra-build-products; ` +
      `echo \\"file binary-dist \\\\\\"$out/share\\\\\\" doc.txt\\" >> $out/nix-support/hydra-build-products; ` +
      `echo \\"runtime 42.5 s\\" > $out/nix-support/hydra-metrics; echo \\"lines 7\\" >> $out/nix-support/hydra-metrics; ` +
      `echo rel-${n}-1.0 > $out/nix-support/hydra-release-name; ${extra}`;
    return `let ${MK_DRV} dep = mk { name = "dep-${n}"; script = "/bin/mkdir $out; echo dep-${n} > $out/dep.txt"; }; in {
      good = mk { name = "good-${n}"; script = "${support('')}"; extra = { outputs = [ "out" "dev" ]; inherit dep; }; };
      failing = mk { name = "failing-${n}"; script = "${support('/bin/touch $out/nix-support/failed')}"; extra = { outputs = [ "out" "dev" ]; inherit dep; }; };
    }`;
  };

  it('reads products, metrics, release name, failed marker and sizes from outputs realised by plain nix', async () => {
    const n = randomBytes(4).toString('hex');
    const [good, failing] = await instantiate(expr(n), ['good', 'failing']);
    await realise([good!, failing!]);
    const ids = { good: await queue(cached, good!, 'good'), failing: await queue(cached, failing!, 'failing') };
    await run(cached, [ids.good, ids.failing]);

    const d = await store.readDerivation(good!);
    const out = d.outputs.find((o) => o.name === 'out')!.path!;
    const dev = d.outputs.find((o) => o.name === 'dev')!.path!;
    // Sizes as nix reports them: the outputs' NARs, and the NARs of their joint closure (out once, and dep).
    const narSizes = async (args: string[]) => {
      const { stdout } = await runNix('nix', ['path-info', '--json', ...args]);
      const parsed = JSON.parse(stdout.toString('utf8')) as { narSize: number }[] | Record<string, { narSize: number }>;
      return (Array.isArray(parsed) ? parsed : Object.values(parsed)).map((i) => i.narSize);
    };
    const sum = (xs: number[]) => xs.reduce((a, b) => a + b, 0);
    const size = sum(await narSizes([out, dev]));
    const closure = await narSizes(['--recursive', out, dev]);
    expect(closure).toHaveLength(3);
    const doc = readFileSync(join(out, 'share/doc.txt'));

    const r = await rows(cached, ids.good);
    expect(r.build).toEqual({ finished: 1, buildstatus: 0, iscachedbuild: 1, size, closuresize: sum(closure), releasename: `rel-${n}-1.0` });
    expect(r.outputs).toEqual([{ name: 'dev', path: dev }, { name: 'out', path: out }]);
    expect(r.products).toEqual([
      { productnr: 1, type: 'doc', subtype: 'readme', filesize: doc.length, sha256hash: createHash('sha256').update(doc).digest('hex'), path: `${out}/share/doc.txt`, name: 'doc.txt', defaultpath: null },
      { productnr: 2, type: 'file', subtype: 'binary-dist', filesize: null, sha256hash: null, path: `${out}/share`, name: 'share', defaultpath: 'doc.txt' },
    ]);
    expect(r.metrics).toEqual([
      { name: 'lines', unit: null, value: 7, project: 'cached', jobset: 'main', job: 'good' },
      { name: 'runtime', unit: 's', value: 42.5, project: 'cached', jobset: 'main', job: 'good' },
    ]);
    expect(r.steps).toBe(0);
    // nix-support/failed: failed with output (6), the rest read all the same.
    const f = await rows(cached, ids.failing);
    expect(f.build).toMatchObject({ finished: 1, buildstatus: 6, iscachedbuild: 1, releasename: `rel-${n}-1.0` });
    expect(f.products).toHaveLength(2);
    expect(f.metrics.map((m) => m.name)).toEqual(['lines', 'runtime']);
    // Rooted before they were read (alreadyBuilt).
    expect(existsSync(join(dir, `roots-${cached.name}`, out.slice('/nix/store/'.length)))).toBe(true);
  }, 180_000);

  it('writes the rows a normal build of the same derivation writes', async () => {
    const n = randomBytes(4).toString('hex');
    const [good, failing] = await instantiate(expr(n), ['good', 'failing']);
    // Built for real under one database; then queued under another that has no build of them.
    const built = { good: await queue(normal, good!, 'good'), failing: await queue(normal, failing!, 'failing') };
    await run(normal, [built.good, built.failing], new LocalNixBuilder({ hydraDataDir: dir }));
    const again = { good: await queue(cached, good!, 'good'), failing: await queue(cached, failing!, 'failing') };
    await run(cached, [again.good, again.failing]);

    for (const k of ['good', 'failing'] as const) {
      const b = await rows(normal, built[k]);
      expect(b.build).toMatchObject({ finished: 1, iscachedbuild: 0, buildstatus: k === 'good' ? 0 : 6 });
      expect(b.products).toHaveLength(2);
      expect(b.steps).toBeGreaterThan(0);
      expect(await rows(cached, again[k])).toEqual({ ...b, build: { ...b.build, iscachedbuild: 1 }, steps: 0 });
    }
  }, 180_000);
  it('still ends cached, with those columns empty, when the outputs cannot be read', async () => {
    const n = randomBytes(4).toString('hex');
    const [good] = await instantiate(expr(n), ['good']);
    await realise([good!]);
    const id = await queue(cached, good!, 'unreadable');
    let asked = 0;
    const finisher = {
      finish: () => Promise.reject(new Error('nothing is built here')),
      readOutputs: () => {
        asked++;
        return Promise.reject(new Error('the store went away'));
      },
    };
    const ended = async (ids: number[]) => {
      const { runtime } = await startRuntime(cached.pool, store, {}, finisher);
      try {
        await waitFor(() => finished(cached, ids), 60_000, 'the build');
        await runtime.scheduler.settle();
      } finally {
        await runtime.stop(0);
      }
    };
    await ended([id]);
    expect(asked).toBe(1);
    const r = await rows(cached, id);
    expect(r.build).toEqual({ finished: 1, buildstatus: 0, iscachedbuild: 1, size: null, closuresize: null, releasename: null });
    expect(r.outputs.map((o: { path: string }) => o.path).every((p: string) => p.startsWith('/nix/store/'))).toBe(true);
    expect(r.products).toEqual([]);
    expect(r.metrics).toEqual([]);

    // Queued again: that build is the earlier one, copied without reading the outputs; the sizes it lacks are 0,
    // as Hydra copies them (C++ getBuildOutputCached, Rust unwrap_or_default).
    const next = await queue(cached, good!, 'unreadable-again');
    await ended([next]);
    expect(asked).toBe(1);
    expect((await rows(cached, next)).build).toEqual({ finished: 1, buildstatus: 0, iscachedbuild: 1, size: 0, closuresize: 0, releasename: null });
  }, 120_000);
  it('reads them once substituted: a build whose step was substituted from a binary cache', async () => {
    // Hydra substitutes while it loads the queue, then ends the build as cached with the outputs read (C++
    // queue-monitor.cc:493-545 then :236-252); Hydrant substitutes when the step is runnable and ends it the same way.
    const n = randomBytes(4).toString('hex');
    const [good] = await instantiate(expr(n), ['good']);
    await realise([good!]);
    const d = await store.readDerivation(good!);
    const [out, dev] = ['out', 'dev'].map((name) => d.outputs.find((o) => o.name === name)!.path!);
    const doc = readFileSync(join(out!, 'share/doc.txt'));
    const { stdout } = await runNix('nix', ['path-info', '--json', '--recursive', out!, dev!]);
    const closure = JSON.parse(stdout.toString('utf8')) as { path: string; narSize: number }[];
    const key = await generateKey(dir, `subst-${n}`);
    const cacheDir = join(dir, `cache-${n}`);
    await runNix('nix', ['--extra-experimental-features', 'nix-command', 'copy', '--to', `file://${cacheDir}?compression=none&secret-key=${key.secretFile}`, out!, dev!]);
    await runNix('nix-store', ['--delete', dev!, out!]);
    await runNix('nix-store', ['--delete', ...closure.map((i) => i.path).filter((p) => p !== out && p !== dev)]);
    expect((await runNixLines('nix-store', ['--check-validity', '--print-invalid', out!, dev!])).sort()).toEqual([out!, dev!].sort());

    const id = await queue(cached, good!, 'substituted');
    const runner = await InProcessRunner.start(cached.url, dir, { useSubstitutes: true, substituters: [`file://${cacheDir}`], trustedPublicKeys: [key.publicKey] });
    try {
      await waitFor(() => finished(cached, [id]), 60_000, 'the substituted build');
    } finally {
      await runner.stop();
    }
    const r = await rows(cached, id);
    // Substitution rows only; nothing built.
    expect(r.steps).toBeGreaterThan(0);
    expect((await cached.pool.query('select count(*)::int n from buildsteps where build = $1 and type <> 1', [id])).rows[0].n).toBe(0);
    const sum = (xs: number[]) => xs.reduce((a, b) => a + b, 0);
    expect(r.build).toEqual({
      finished: 1, buildstatus: 0, iscachedbuild: 1, releasename: `rel-${n}-1.0`,
      size: sum(closure.filter((i) => i.path === out || i.path === dev).map((i) => i.narSize)), closuresize: sum(closure.map((i) => i.narSize)),
    });
    expect(r.products[0]).toMatchObject({ type: 'doc', subtype: 'readme', filesize: doc.length, sha256hash: createHash('sha256').update(doc).digest('hex'), path: `${out}/share/doc.txt` });
    expect(r.products).toHaveLength(2);
    expect(r.metrics.map((m: { name: string; value: number }) => [m.name, m.value])).toEqual([['lines', 7], ['runtime', 42.5]]);
  }, 180_000);
});
