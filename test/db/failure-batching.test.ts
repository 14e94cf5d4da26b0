import { randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type pg from 'pg';
import { describe, expect, it } from 'vitest';
import { LocalNixStore } from '../../src/nix/local-store.ts';
import { useTestDatabase } from '../helpers/db.ts';
import { createJobset } from '../helpers/hydra-rows.ts';
import { InProcessRunner } from '../helpers/in-process-runner.ts';
import { instantiate, MK_DRV } from '../helpers/nix.ts';
import { waitFor } from '../helpers/runtime.ts';

const DEPENDENTS = 2000;

/**
 * A step that fails with 2,000 builds depending on it: the failure reaches
 * them in a few transactions on a few connections, not one transaction (and
 * connection) per build.
 */
describe('failing 2,000 dependents', () => {
  const db = useTestDatabase();

  it('ends every dependent with dependency failed in a bounded number of transactions and connections', async () => {
    const nonce = randomBytes(4).toString('hex');
    const [failing, ...dependents] = await instantiate(
      `let ${MK_DRV} base = mk { name = "fails-${nonce}"; script = "exit 1"; }; in {
        base = base;
        dependents = builtins.genList (i: mk { name = "dep-\${toString i}-${nonce}"; script = "/bin/cat \${base} > $out"; }) ${DEPENDENTS};
      }`,
      ['base', 'dependents'],
    );
    expect(dependents).toHaveLength(DEPENDENTS);
    const store = new LocalNixStore();
    const outPath = async (drv: string) => (await store.readDerivation(drv)).outputs.find((o) => o.name === 'out')!.path;
    const jobset = await createJobset(db.pool);
    const dir = mkdtempSync(join(tmpdir(), 'hydrant-failure-batching-'));
    const runner = await InProcessRunner.start(db.url, dir, { localBuilderJobs: 2, tokenPaths: [], maxRetries: 0 });
    try {
      const pool = runner.daemon.database.pool;
      // The runner's pool, instrumented: connections checked out at once, and write transactions.
      let out = 0;
      let peak = 0;
      let transactions = 0;
      const counted = new WeakSet<object>();
      pool.on('acquire', (client: pg.PoolClient) => {
        peak = Math.max(peak, ++out);
        if (counted.has(client)) return;
        counted.add(client);
        const query = client.query.bind(client) as (...a: unknown[]) => unknown;
        (client as { query: unknown }).query = (...a: unknown[]) => {
          if (a[0] === 'begin') transactions++;
          return query(...a);
        };
      });
      pool.on('release', () => out--);

      // Queued together, as one evaluation does: the failing build first.
      const drvs = [failing!, ...dependents];
      const paths = await Promise.all(drvs.map(outPath));
      const { rows } = await db.pool.query<{ id: number }>(
        `insert into builds (finished, timestamp, jobset_id, job, drvpath, system)
         select 0, extract(epoch from now())::int, $1, 'job-' || n, d, 'x86_64-linux'
         from unnest($2::text[]) with ordinality as t(d, n) order by n returning id`,
        [jobset, drvs],
      );
      const ids = rows.map((r) => r.id);
      await db.pool.query(`insert into buildoutputs (build, name, path) select unnest($1::int[]), 'out', unnest($2::text[])`, [ids, paths]);
      await db.pool.query("notify builds_added, ''");
      const unfinished = async () => (await db.pool.query<{ n: number }>('select count(*)::int n from builds where finished = 0')).rows[0]!.n;
      await waitFor(async () => (await unfinished()) === 0, 120_000, 'every build to end');
      await runner.daemon.runtime!.scheduler.settle();

      const status = (await db.pool.query<{ buildstatus: number; n: number }>('select buildstatus, count(*)::int n from builds group by buildstatus order by 1')).rows;
      expect(status).toEqual([{ buildstatus: 1, n: 1 }, { buildstatus: 2, n: DEPENDENTS }]);
      // Each dependent has one step row: the failed derivation, failed (1, propagated) or a cached failure (8).
      const steps = (
        await db.pool.query<{ n: number; drvpath: string; status: number }>(
          'select count(*)::int n, min(drvpath) drvpath, min(status) status from buildsteps where build = any($1) group by build',
          [ids.slice(1)],
        )
      ).rows;
      expect(steps).toHaveLength(DEPENDENTS);
      expect(steps.filter((s) => s.n !== 1 || s.drvpath !== failing || ![1, 8].includes(s.status))).toEqual([]);
      expect(peak).toBeLessThanOrEqual(8);
      // The failure's own write, the starts, and the dependents in batches (2,000 / 64 loaders at worst).
      expect(transactions).toBeGreaterThan(0);
      expect(transactions).toBeLessThanOrEqual(60);
    } finally {
      await runner.stop().catch(() => {});
      rmSync(dir, { recursive: true, force: true });
    }
  }, 240_000);
});
