import { randomBytes } from 'node:crypto';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { LocalNixStore } from '../../src/nix/local-store.ts';
import { useTestDatabase } from '../helpers/db.ts';
import { createJobset, queueBuild } from '../helpers/hydra-rows.ts';
import { runCli, startCli } from '../helpers/cli.ts';
import { instantiate, MK_DRV } from '../helpers/nix.ts';
import { waitFor } from '../helpers/runtime.ts';

describe('hydrant serve with a local builder', () => {
  const db = useTestDatabase();

  it('builds queued builds, refuses a second runner, picks up builds added while running, and drains on SIGTERM', async () => {
    const nonce = randomBytes(4).toString('hex');
    const dir = mkdtempSync(join(tmpdir(), 'hydrant-serve-'));
    const config = join(dir, 'runner.toml');
    writeFileSync(config, `dbUrl = "${db.url}"\nhydraDataDir = "${dir}"\nlocalBuilderJobs = 2\nshutdownGraceInS = 5\nhttpListen = "127.0.0.1:0"\n`);
    const [a, b, slow] = await instantiate(
      `let ${MK_DRV} dep = mk { name = "dep-${nonce}"; script = "echo dep > $out"; }; in {
        a = mk { name = "a-${nonce}"; script = "/bin/cat \${dep} > $out"; };
        b = mk { name = "b-${nonce}"; script = "echo b > $out"; };
        slow = mk { name = "slow-${nonce}"; script = "/bin/sleep 30; echo > $out"; };
      }`,
      ['a', 'b', 'slow'],
    );
    const store = new LocalNixStore();
    const jobset = await createJobset(db.pool);
    const queue = async (drv: string, job: string) => queueBuild(db.pool, jobset, drv, job, 'x86_64-linux', (await store.readDerivation(drv)).outputs);
    const idA = await queue(a!, 'a');

    const p = startCli(['serve', '--config', config]);
    await p.waitFor(/"msg":"runner running"/);
    const second = await runCli(['serve', '--config', config]);
    expect(second.code).toBe(1);
    expect(second.stderr).toMatch(/RUNNER_LOCKED: another queue runner is already working on this database/);

    await waitFor(async () => (await db.pool.query('select finished from builds where id = $1', [idA])).rows[0].finished === 1, 30_000, 'build a');
    // Added while running: the evaluator inserts the row and notifies.
    const idB = await queue(b!, 'b');
    await db.pool.query("notify builds_added, ''");
    await waitFor(async () => (await db.pool.query('select finished from builds where id = $1', [idB])).rows[0].finished === 1, 30_000, 'build b');
    const rows = (await db.pool.query('select id, buildstatus from builds order by id')).rows;
    expect(rows).toEqual([{ id: idA, buildstatus: 0 }, { id: idB, buildstatus: 0 }]);

    // A build still running when SIGTERM comes is aborted after the grace period, its row left consistent.
    const idSlow = await queue(slow!, 'slow');
    await db.pool.query("notify builds_added, ''");
    await waitFor(async () => (await db.pool.query('select count(*)::int n from buildsteps where build = $1 and busy != 0', [idSlow])).rows[0].n === 1, 30_000, 'slow step to start');
    p.child.kill('SIGTERM');
    expect(await p.exited).toBe(0);
    const slowSteps = (await db.pool.query('select busy, status, errormsg from buildsteps where build = $1', [idSlow])).rows;
    expect(slowSteps).toEqual([{ busy: 0, status: 3, errormsg: 'runner stopping' }]);
    expect((await db.pool.query('select finished from builds where id = $1', [idSlow])).rows[0].finished).toBe(0);
  }, 120_000);
});
