import { createHash, randomBytes } from 'node:crypto';
import { existsSync, mkdtempSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { LocalNixBuilder } from '../../src/builder/local-builder.ts';
import { LocalNixStore } from '../../src/nix/local-store.ts';
import { useTestDatabase } from '../helpers/db.ts';
import { createJobset, queueBuild } from '../helpers/hydra-rows.ts';
import { instantiate, MK_DRV } from '../helpers/nix.ts';
import { machineRecord, startRuntime, waitFor } from '../helpers/runtime.ts';

/** A small real DAG: shared base, multiple outputs, a failing dependency, nix-support products and `failed`. */
function expression(nonce: string): string {
  return `let ${MK_DRV}
    base = mk { name = "base-${nonce}"; script = "echo base > $out"; };
    lib = mk { name = "lib-${nonce}"; script = "/bin/mkdir $out $dev; /bin/cat \${base} > $out/lib; echo h > $dev/h"; extra = { outputs = [ "out" "dev" ]; }; };
    app = mk { name = "app-${nonce}"; script = "/bin/cat \${lib}/lib \${lib.dev}/h > $out"; };
    broken = mk { name = "broken-${nonce}"; script = "echo going to fail; exit 1"; };
    usesBroken = mk { name = "uses-broken-${nonce}"; script = "/bin/cat \${broken} \${base} > $out"; };
    withFailed = mk { name = "with-failed-${nonce}"; script = "/bin/mkdir -p $out/nix-support; /bin/touch $out/nix-support/failed"; };
    products = mk { name = "products-${nonce}"; script = ''
      /bin/mkdir -p $out/nix-support $out/doc
      printf 'manual' > $out/doc/manual.html
      echo "doc manual $out/doc/manual.html" > $out/nix-support/hydra-build-products
      echo "file binary-dist $out/doc/manual.html" >> $out/nix-support/hydra-build-products
      echo "file evil /etc/passwd" >> $out/nix-support/hydra-build-products
      echo "products-1.0" > $out/nix-support/hydra-release-name
      echo "lines 42 count" > $out/nix-support/hydra-metrics
      /bin/cat \${base} > /dev/null
    ''; };
  in { inherit base lib app broken usesBroken withFailed products; }`;
}

describe('end to end with real Nix behind the builder interface', () => {
  const db = useTestDatabase();
  const dataDir = mkdtempSync(join(tmpdir(), 'hydrant-e2e-'));

  it('builds a real DAG and leaves the rows Hydra expects', async () => {
    const attrs = ['app', 'broken', 'usesBroken', 'withFailed', 'products'];
    const nonce = randomBytes(4).toString('hex');
    const drvs = await instantiate(expression(nonce), attrs);
    const drv = Object.fromEntries(attrs.map((a, i) => [a, drvs[i]!]));
    const jobset = await createJobset(db.pool, 'e2e', 'main');
    const id: Record<string, number> = {};
    const store = new LocalNixStore();
    for (const a of attrs) {
      const d = await store.readDerivation(drv[a]!);
      id[a] = await queueBuild(db.pool, jobset, drv[a]!, a, d.system, d.outputs);
    }

    const { runtime } = await startRuntime(db.pool, store);
    runtime.scheduler.addMachine(machineRecord('local', { maxJobs: 2 }), new LocalNixBuilder({ hydraDataDir: dataDir }));
    await waitFor(async () => (await db.pool.query('select count(*)::int n from builds where finished = 0')).rows[0].n === 0, 60_000, 'builds to finish');
    await runtime.scheduler.settle();
    // A build whose outputs exist now ends at once as cached, with its output paths filled in.
    const again = await queueBuild(db.pool, jobset, drv.app!, 'app-again', 'x86_64-linux', (await store.readDerivation(drv.app!)).outputs.map((o) => ({ name: o.name, path: null })));
    await runtime.monitor.request('added');
    await runtime.scheduler.settle();
    const cached = (await db.pool.query('select b.finished, b.buildstatus, b.iscachedbuild, o.path from builds b join buildoutputs o on o.build = b.id where b.id = $1', [again])).rows;
    expect(cached).toEqual([{ finished: 1, buildstatus: 0, iscachedbuild: 1, path: (await store.readDerivation(drv.app!)).outputs[0]!.path }]);
    await runtime.stop(0);

    const builds = Object.fromEntries(
      (await db.pool.query('select id, finished, buildstatus, starttime, stoptime, size, closuresize, releasename, iscachedbuild from builds')).rows.map((r) => [r.id, r]),
    );
    const b = (a: string) => builds[id[a]!];
    for (const a of attrs) {
      expect(b(a).finished).toBe(1);
      expect(b(a).starttime).toBeGreaterThan(0);
      expect(b(a).stoptime).toBeGreaterThanOrEqual(b(a).starttime);
    }
    expect(b('app')).toMatchObject({ buildstatus: 0, iscachedbuild: 0 });
    expect(b('app').size).toBeGreaterThan(0);
    expect(b('app').closuresize).toBeGreaterThanOrEqual(b('app').size);
    expect(b('broken')).toMatchObject({ buildstatus: 1 });
    expect(b('usesBroken')).toMatchObject({ buildstatus: 2 });
    expect(b('withFailed')).toMatchObject({ buildstatus: 6 });
    expect(b('products')).toMatchObject({ buildstatus: 0, releasename: 'products-1.0' });

    // Output paths are filled in and exist.
    const outs = (await db.pool.query('select build, name, path from buildoutputs order by build, name')).rows;
    for (const a of ['app', 'withFailed', 'products']) {
      const o = outs.filter((r) => r.build === id[a]);
      expect(o.length).toBeGreaterThan(0);
      for (const r of o) expect(existsSync(r.path)).toBe(true);
    }

    // Each built derivation has exactly one successful step row, not busy, on the machine.
    const steps = (await db.pool.query('select build, stepnr, type, drvpath, busy, status, machine, starttime, stoptime, propagatedfrom, errormsg from buildsteps')).rows;
    const ok = steps.filter((s) => s.status === 0);
    expect(ok.map((s) => (s.drvpath as string).slice('/nix/store/'.length + 33).replace(`-${nonce}.drv`, '')).sort()).toEqual(['app', 'base', 'lib', 'products', 'with-failed']);
    for (const s of steps) expect(s.busy).toBe(0);
    for (const s of ok) expect(s).toMatchObject({ machine: 'local', type: 0, propagatedfrom: null });
    // The failing step ran once, under a build needing it. The other build got a
    // propagated row if it was loaded before the failure, or a cached-failure
    // row (8) if it was loaded after it; both name the build the step failed
    // in, as Hydra's queue monitor does for a cached failure.
    const failed = steps.filter((s) => s.drvpath === drv.broken);
    const ran = failed.filter((s) => s.status === 1 && s.propagatedfrom === null);
    expect(ran).toHaveLength(1);
    expect(ran[0]).toMatchObject({ status: 1, machine: 'local' });
    expect([id.broken, id.usesBroken]).toContain(ran[0].build);
    const other = failed.filter((s) => s !== ran[0]);
    expect(other).toHaveLength(1);
    if (other[0].status === 1) expect(other[0]).toMatchObject({ propagatedfrom: ran[0].build });
    else expect(other[0]).toMatchObject({ status: 8, propagatedfrom: ran[0].build });
    // The build log is where Hydra's web UI looks for it.
    const base = drv.broken!.split('/').pop()!;
    expect(readFileSync(join(dataDir, 'build-logs', base.slice(0, 2), base.slice(2)), 'utf8')).toContain('going to fail');

    // Products, metrics and the cached failure.
    const products = (await db.pool.query('select productnr, type, subtype, filesize, sha256hash, path, name from buildproducts where build = $1 order by productnr', [id.products])).rows;
    expect(products.map((p) => [p.type, p.subtype, p.name])).toEqual([['doc', 'manual', 'manual.html'], ['file', 'binary-dist', 'manual.html']]);
    expect(products[0]).toMatchObject({ filesize: 6, sha256hash: createHash('sha256').update('manual').digest('hex') });
    const metrics = (await db.pool.query('select name, value, unit, project, jobset, job from buildmetrics where build = $1', [id.products])).rows;
    expect(metrics).toEqual([{ name: 'lines', value: 42, unit: 'count', project: 'e2e', jobset: 'main', job: 'products' }]);
    const failedPaths = (await db.pool.query('select path from failedpaths')).rows.map((r) => r.path);
    expect(failedPaths.some((p: string) => p.includes(`broken-${nonce}`))).toBe(true);
  }, 120_000);
});
