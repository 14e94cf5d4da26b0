import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { freePort, startEmbeddedPostgres } from '../../src/db/embedded.ts';
import { createPool } from '../../src/db/pool.ts';
import { ensureSchema } from '../../src/db/schema.ts';
import { startCli } from '../helpers/cli.ts';
import { useTestDatabase } from '../helpers/db.ts';
import { createJobset } from '../helpers/hydra-rows.ts';
import { instantiateOutcomes, OUTCOMES, queueJobs } from '../helpers/outcomes.ts';
import { waitFor } from '../helpers/runtime.ts';

/**
 * A hot standby: two real `hydrant serve` processes on one database; the
 * second waits while the first holds the runner lock, and when the first is
 * SIGKILLed it takes over from the database alone, aborts the steps the dead
 * runner left busy and finishes every build.
 */
describe('hydrant serve --standby', () => {
  const db = useTestDatabase();
  let dir: string;
  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), 'hydrant-standby-'));
  });
  afterAll(async () => {
    rmSync(dir, { recursive: true, force: true });
  });

  const runner = (name: string, standby: boolean, url = db.url) => {
    const d = join(dir, name);
    mkdirSync(d);
    const config = join(d, 'runner.toml');
    writeFileSync(config, `dbUrl = "${url}"\nhydraDataDir = "${d}"\nlocalBuilderJobs = 3\nhttpListen = "127.0.0.1:0"\nshutdownGraceInS = 2\n`);
    return startCli(['serve', '--config', config, ...(standby ? ['--standby'] : [])]);
  };
  const httpPort = async (p: ReturnType<typeof startCli>) => Number(/"port":(\d+)/.exec(await p.waitFor(/"port":\d+,"writes":\w+,"msg":"HTTP API listening"/, 60_000))![1]);
  const status = async (port: number) => ((await (await fetch(`http://127.0.0.1:${port}/status`)).json()) as { status: string }).status;

  it('waits as standby, takes over a SIGKILLed runner and finishes every build with its right status', async () => {
    // The three slow ones (ok1, ok2, bad) are what the active runner is building when it dies.
    const drvs = await instantiateOutcomes('standby', 3, { quick: 'echo q > $out' });
    const active = runner('active', true);
    let standby: ReturnType<typeof startCli> | null = null;
    try {
      // Whichever takes the lock first is the active one: the standby starts after.
      await active.waitFor(/"msg":"runner running"/, 60_000);
      standby = runner('standby', true);
      const standbyPort = await httpPort(standby);
      await standby.waitFor(/"msg":"another runner holds the database; waiting as a hot standby"/, 60_000);
      expect(await status(standbyPort)).toBe('standby');
      expect(await (await fetch(`http://127.0.0.1:${standbyPort}/metrics`)).text()).toMatch(/^hydrant_runner_state\{state="standby"\} 1$/m);

      const ids = await queueJobs(db.pool, await createJobset(db.pool), drvs);
      const all = Object.values(ids);
      const busy = async () => (await db.pool.query<{ build: number; stepnr: number }>('select build, stepnr from buildsteps where build = any($1) and busy != 0', [all])).rows;
      await waitFor(async () => (await busy()).length === 3, 60_000, 'the three slow steps to run on the active runner');
      const leftBusy = await busy();

      active.child.kill('SIGKILL');
      const killedAt = Date.now();
      await active.exited;
      await standby.waitFor(/"msg":"the active runner is gone; taking over"/, 60_000);
      await standby.waitFor(/"msg":"runner running"/, 60_000);
      console.log(`standby took over ${Date.now() - killedAt} ms after the SIGKILL`);
      expect(await status(standbyPort)).toBe('running');

      await waitFor(async () => (await db.pool.query<{ n: number }>('select count(*)::int n from builds where id = any($1) and finished = 1', [all])).rows[0]!.n === all.length, 90_000, 'every build to end');
      const rows = (await db.pool.query<{ id: number; buildstatus: number }>('select id, buildstatus from builds where id = any($1)', [all])).rows;
      const got = Object.fromEntries(Object.entries(ids).map(([name, id]) => [name, rows.find((r) => r.id === id)!.buildstatus]));
      expect(got).toEqual({ ...OUTCOMES, quick: 0 });
      expect(await busy()).toEqual([]);
      // The dead runner's attempts were aborted (3) by the standby, as a restart does.
      const left = (await db.pool.query<{ build: number; stepnr: number; status: number }>(
        'select build, stepnr, status from buildsteps where (build, stepnr) in (select * from unnest($1::int[], $2::int[])) order by build, stepnr',
        [leftBusy.map((r) => r.build), leftBusy.map((r) => r.stepnr)],
      )).rows;
      expect(left.map((r) => r.status)).toEqual([3, 3, 3]);
      expect(standby.output()).toMatch(/"steps":3,"msg":"aborted steps left busy by a previous run"/);

      standby.child.kill('SIGTERM');
      expect(await standby.exited).toBe(0);
    } finally {
      active.child.kill('SIGKILL');
      standby?.child.kill('SIGKILL');
    }
  }, 240_000);

  it('keeps the active runner active across a database restart (the standby does not steal the lock)', async () => {
    const stateDir = mkdtempSync(join(tmpdir(), 'hydrant-standby-pg-'));
    const port = await freePort();
    let server = await startEmbeddedPostgres({ stateDir, port, ephemeral: true });
    const pool = createPool(server.url, { max: 1 });
    await ensureSchema(pool);
    await pool.end();
    const active = runner('active-r', true, server.url);
    let standby: ReturnType<typeof startCli> | null = null;
    try {
      const activePort = await httpPort(active);
      await active.waitFor(/"msg":"runner running"/, 60_000);
      standby = runner('standby-r', true, server.url);
      const standbyPort = await httpPort(standby);
      await standby.waitFor(/"msg":"another runner holds the database; waiting as a hot standby"/, 60_000);
      await server.stop();
      server = await startEmbeddedPostgres({ stateDir, port, ephemeral: true });
      await active.waitFor(/"msg":"runner lock re-taken; resuming and re-scanning the queue"/, 60_000);
      // Longer than the standby's takeover window: it saw the lock held all along.
      await new Promise((r) => setTimeout(r, 5000));
      expect(await status(activePort)).toBe('running');
      expect(await status(standbyPort)).toBe('standby');
      active.child.kill('SIGTERM');
      expect(await active.exited).toBe(0);
      await standby.waitFor(/"msg":"the active runner is gone; taking over"/, 60_000);
      standby.child.kill('SIGTERM');
      expect(await standby.exited).toBe(0);
    } finally {
      active.child.kill('SIGKILL');
      standby?.child.kill('SIGKILL');
      await server.stop();
      rmSync(stateDir, { recursive: true, force: true });
    }
  }, 180_000);
});
