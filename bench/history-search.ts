/**
 * History search benchmark: `GET /status/history?q=`'s statement
 * (src/db/sql/history/search-builds.sql) on a real (embedded) PostgreSQL
 * holding `--builds` builds with Hydra's schema and indexes, one output and
 * two step rows each. Times one page (50 rows) per kind of search, against
 * Hydra's own web search for the same text (`/search`: `ilike '%q%'` on
 * drvPath and on BuildOutputs.path, newest first). Prints one JSON object.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { searchBuilds } from '../src/db/build-search.ts';
import { startEmbeddedPostgres } from '../src/db/embedded.ts';
import { createPool } from '../src/db/pool.ts';
import { ensureSchema } from '../src/db/schema.ts';
import { parseBuildSearch } from '../src/status/build-search.ts';
import { benchOptions, log, median, round, time } from './common.ts';

export const describe = 'history search (q=) on N builds: one page per kind of search, and Hydra\'s web search for the same text';

// md5's hex with `e` (not in Nix's base 32) replaced: a valid 32-character hash part.
const HASH = (seed: string): string => `translate(md5(${seed}), 'e', 'x')`;

export async function run(argv: string[]): Promise<Record<string, unknown>> {
  const { builds, reps } = benchOptions(argv, { builds: 60_000, reps: 3 });
  const dir = mkdtempSync(join(tmpdir(), 'hydrant-bench-search-'));
  const pg = await startEmbeddedPostgres({ stateDir: dir, ephemeral: true });
  const pool = createPool(pg.url, { max: 2 });
  try {
    await ensureSchema(pool);
    const { rows: trgm } = await pool.query("select count(*)::int as n from pg_extension where extname = 'pg_trgm'");
    log(`filling ${builds} builds`);
    await pool.query("insert into users (username, emailaddress, password) values ('bench', 'bench@localhost', '!')");
    await pool.query("insert into projects (name, displayname, owner) select 'project-' || p, 'p', 'bench' from generate_series(0, 1) p");
    await pool.query(
      `insert into jobsets (name, project, emailoverride, nixexprinput, nixexprpath, schedulingshares)
       select 'jobset-' || j, 'project-' || (j % 2), '', 'src', 'release.nix', 100 from generate_series(0, 9) j`,
    );
    await pool.query(
      `insert into builds (id, finished, buildstatus, timestamp, starttime, stoptime, jobset_id, job, drvpath, nixname, system)
       select i, 1, case when i % 7 = 0 then 1 else 0 end, 1700000000 + i, 1700000000 + i, 1700000001 + i,
              (select min(id) from jobsets) + i % 10, 'pkg-' || (i % 5000) || '.x86_64-linux',
              '/nix/store/' || ${HASH("'d' || i")} || '-pkg-' || i || '.drv', 'pkg-' || i, 'x86_64-linux'
         from generate_series(1, $1::int) i`,
      [builds],
    );
    await pool.query("select setval('builds_id_seq', $1::int)", [builds]);
    await pool.query(`insert into buildoutputs (build, name, path) select i, 'out', '/nix/store/' || ${HASH("'o' || i")} || '-pkg-' || i from generate_series(1, $1::int) i`, [builds]);
    // Step 1: the build's own derivation; step 2: one of 1000 dependencies shared between builds.
    await pool.query(
      `insert into buildsteps (build, stepnr, type, drvpath, busy, status, machine, starttime, stoptime)
       select i, 1, 0, '/nix/store/' || ${HASH("'d' || i")} || '-pkg-' || i || '.drv', 0, 0, 'builder-' || (i % 20), 1, 2 from generate_series(1, $1::int) i
       union all
       select i, 2, 0, '/nix/store/' || ${HASH("'s' || (i % 1000)")} || '-dep-' || (i % 1000) || '.drv', 0, 0, 'builder-' || (i % 20), 1, 2 from generate_series(1, $1::int) i`,
      [builds],
    );
    await pool.query(`insert into buildstepoutputs (build, stepnr, name, path) select i, 1, 'out', '/nix/store/' || ${HASH("'o' || i")} || '-pkg-' || i from generate_series(1, $1::int) i`, [builds]);
    await pool.query('analyze');
    const mid = Math.floor(builds / 2);
    const one = async (sqlText: string, params: unknown[]): Promise<string> => (await pool.query(sqlText, params)).rows[0].v as string;
    const drv = await one('select drvpath as v from builds where id = $1', [mid]);
    const out = await one('select path as v from buildoutputs where build = $1', [mid]);
    const dep = await one('select drvpath as v from buildsteps where build = $1 and stepnr = 2', [mid]);
    const hashOf = (p: string): string => p.slice('/nix/store/'.length, '/nix/store/'.length + 32);
    const searches: Record<string, string> = {
      id: String(mid),
      drvPath: drv,
      outputPath: out,
      stepDrvPath: dep,
      drvHashPart: hashOf(drv),
      outputHashPart: hashOf(out),
      textCommon: 'pkg-42',
      machine: 'builder-7',
      textNoMatch: 'no-such-job', // the worst case: every build walked
    };
    const hydraWeb = async (q: string): Promise<number> => {
      const a = await pool.query("select b.id from builds b join buildoutputs o on o.build = b.id where o.path ilike '%' || $1 || '%' order by b.id desc limit 50", [q]);
      const b = await pool.query("select id from builds where drvpath ilike '%' || $1 || '%' order by id desc limit 50", [q]);
      return a.rowCount! + b.rowCount!;
    };
    const results: Record<string, { ms: number; rows: number; hydraWebSearchMs?: number }> = {};
    for (const [name, q] of Object.entries(searches)) {
      const s = parseBuildSearch(q)!;
      const runs: number[] = [];
      let rows = 0;
      await searchBuilds(pool, s, {}, 51, 0, 60_000); // warm
      for (let r = 0; r < reps; r++) {
        const t = await time(() => searchBuilds(pool, s, {}, 51, 0, 60_000));
        runs.push(t.ms);
        rows = t.value.length;
      }
      results[name] = { ms: round(median(runs), 2), rows };
      // Hydra's /search matches store paths only (and jobs among current builds): compared for the path kinds.
      if (s.path !== null || s.part !== null) {
        const h: number[] = [];
        for (let r = 0; r < reps; r++) h.push((await time(() => hydraWeb(q))).ms);
        results[name]!.hydraWebSearchMs = round(median(h), 2);
      }
      log(`${name}: ${JSON.stringify(results[name])}`);
    }
    return { builds, reps, pgTrgm: trgm[0].n === 1, pageRows: 50, searches: results };
  } finally {
    await pool.end();
    await pg.stop();
    rmSync(dir, { recursive: true, force: true });
  }
}
