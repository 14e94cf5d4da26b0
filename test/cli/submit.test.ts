import { randomBytes } from 'node:crypto';
import { mkdtempSync, readdirSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import pg from 'pg';
import { describe, expect, it } from 'vitest';
import { useTestDatabase } from '../helpers/db.ts';
import { runCli } from '../helpers/cli.ts';
import { instantiate, MK_DRV } from '../helpers/nix.ts';

describe('hydrant submit', () => {
  const db = useTestDatabase();

  it('queues the jobs of a Nix file like Hydra\'s evaluator, without duplicates on resubmission', async () => {
    const nonce = randomBytes(4).toString('hex');
    const dir = mkdtempSync(join(tmpdir(), 'hydrant-submit-'));
    const file = join(dir, 'release.nix');
    writeFileSync(file, `{ }: let ${MK_DRV} in {
      # meta is attached after the derivation, as nixpkgs' mkDerivation does.
      hello = mk { name = "hello-${nonce}"; script = "echo hi > $out"; } // { meta = { description = "says hi"; schedulingPriority = 50; timeout = 60; maxSilent = 30; license = { shortName = "mit"; }; }; };
      multi = mk { name = "multi-${nonce}"; script = "echo > $out; echo > $dev"; extra = { outputs = [ "out" "dev" ]; }; } // { meta.broken = x: x; };
      notAJob = 42;
    }`);
    const missing = await runCli(['submit', '--db-url', db.url, '--project', 'p', '--jobset', 'j', '--file', file]);
    expect(missing.code).toBe(1);
    expect(missing.stderr).toBe('hydrant: JOBSET_NOT_FOUND: no jobset p:j (pass --create to create it)\n');

    // Its temporary files go under TMPDIR, and none is left behind.
    const tmp = mkdtempSync(join(tmpdir(), 'hydrant-submit-tmp-'));
    // Like Hydra's evaluator, the hint names the lowest new build id (a runner reads from there).
    const listener = new pg.Client({ connectionString: db.url });
    await listener.connect();
    const hints: (string | undefined)[] = [];
    listener.on('notification', (n) => n.channel === 'builds_added' && hints.push(n.payload));
    await listener.query('listen builds_added');
    const first = await runCli(['submit', '--db-url', db.url, '--project', 'p', '--jobset', 'j', '--create', '--file', file], { TMPDIR: tmp });
    await listener.query('select 1'); // a round trip: notifications sent before it have arrived
    await listener.end();
    expect(first.stderr).toBe('');
    expect(first.code).toBe(0);
    expect(readdirSync(tmp).filter((n) => n.startsWith('hydrant-'))).toEqual([]);
    expect(first.stdout).toMatch(/: 2 queued, 0 already there/);
    const builds = (await db.pool.query(
      'select id, finished, job, nixname, description, system, priority, timeout, maxsilent, license, iscurrent from builds order by job',
    )).rows;
    expect(builds.map((b) => b.job)).toEqual(['hello', 'multi']);
    expect(hints).toEqual([String(Math.min(...builds.map((b) => b.id as number)))]);
    expect(builds[0]).toMatchObject({ finished: 0, nixname: `hello-${nonce}`, description: 'says hi', system: 'x86_64-linux', priority: 50, timeout: 60, maxsilent: 30, license: 'mit', iscurrent: 1 });
    expect(builds[1]).toMatchObject({ priority: 100, timeout: 36000, maxsilent: 7200, description: null });
    const [helloDrv, multiDrv] = await instantiate(`import ${file} {}`, ['hello', 'multi']);
    expect((await db.pool.query('select drvpath from builds order by job')).rows.map((r) => r.drvpath)).toEqual([helloDrv, multiDrv]);
    const outs = (await db.pool.query('select name from buildoutputs where build = $1 order by name', [builds[1].id])).rows;
    expect(outs.map((o) => o.name)).toEqual(['dev', 'out']);
    const evals = (await db.pool.query('select e.id, e.hasnewbuilds, e.nrbuilds, count(m.build)::int as members from jobsetevals e join jobsetevalmembers m on m.eval = e.id group by e.id')).rows;
    expect(evals).toEqual([{ id: evals[0].id, hasnewbuilds: 1, nrbuilds: 2, members: 2 }]);

    const again = await runCli(['submit', '--db-url', db.url, '--project', 'p', '--jobset', 'j', '--file', file]);
    expect(again.stdout).toMatch(/: 0 queued, 2 already there/);
    expect((await db.pool.query('select count(*)::int n from builds')).rows[0].n).toBe(2);

    // .drv paths directly.
    const [other] = await instantiate(`let ${MK_DRV} in { o = mk { name = "other-${nonce}"; script = "echo > $out"; }; }`, ['o']);
    const byDrv = await runCli(['submit', '--db-url', db.url, '--project', 'p', '--jobset', 'j', other!]);
    expect(byDrv.stdout).toMatch(new RegExp(`queued build \\d+ other-${nonce}`));
    // The newest evaluation's builds are the current ones.
    expect((await db.pool.query('select job from builds where iscurrent = 1')).rows.map((r) => r.job)).toEqual([`other-${nonce}`]);
  }, 60_000);
});
