import { describe, expect, it } from 'vitest';
import { describeCatalog } from '../../src/db/catalog.ts';
import { checkSchema, ensureSchema, findMissing } from '../../src/db/schema.ts';
import { SchemaMismatchError } from '../../src/errors/index.ts';
import { useTestDatabase } from '../helpers/db.ts';

describe('Hydra schema on an empty database', () => {
  const db = useTestDatabase({ withSchema: false });

  it('creates every table Hydrant needs at SchemaVersion 87, then accepts it unchanged', async () => {
    expect(await findMissing(db.pool)).toContain('table builds');
    const first = await ensureSchema(db.pool);
    expect(first).toEqual({ created: true, version: 87 });
    expect(await findMissing(db.pool)).toEqual([]);
    const before = await describeCatalog(db.pool);
    expect(before.length).toBeGreaterThan(200);
    const second = await ensureSchema(db.pool);
    expect(second).toEqual({ created: false, version: 87 });
    expect(await describeCatalog(db.pool)).toEqual(before);
  });

  it('has the same column types, defaults and constraints Hydra declares', async () => {
    const cat = await describeCatalog(db.pool);
    const has = (line: string) => expect(cat).toContain(line);
    has('columns builds: maxsilent integer default 3600');
    has('columns builds: timeout integer default 36000');
    has('columns builds: size bigint');
    has('columns buildsteps: machine text not null default \'\'::text');
    has('columns buildsteps: resolveddrvpath text');
    has('columns buildmetrics: value double precision not null');
    has('columns buildoutputs: path text');
    has('constraints buildsteps: buildsteps_check CHECK (((status = 13) = (resolveddrvpath IS NOT NULL)))');
    has('constraints jobsets: jobsets_schedulingshares_nonzero_check CHECK ((schedulingshares > 0))');
    has('constraints builds: builds_check CHECK (((finished = 0) OR ((stoptime IS NOT NULL) AND (stoptime <> 0))))');
    has('indexes buildsteps: CREATE INDEX indexbuildstepsonbusy ON public.buildsteps USING btree (busy) WHERE (busy <> 0)');
    expect(cat.some((l) => l.startsWith('rules failedpaths: idempotentinsert'))).toBe(true);
    expect(cat.filter((l) => l.startsWith('triggers builds:'))).toHaveLength(5);
  });
});

describe('an existing Hydra schema', () => {
  const db = useTestDatabase();

  it('enforces Hydra constraints Hydrant relies on', async () => {
    const q = (s: string) => db.pool.query(s);
    await q("insert into users (username, emailaddress, password) values ('u', 'u@x', 'x')");
    await q("insert into projects (name, displayname, owner) values ('p', 'P', 'u')");
    await expect(q("insert into jobsets (name, project, emailoverride) values ('bad', 'p', '')")).rejects.toThrow(/jobsets_legacy_paths_check/);
    const js = await q("insert into jobsets (name, project, emailoverride, nixexprinput, nixexprpath) values ('j', 'p', '', 'src', 'release.nix') returning id");
    const jobsetId = js.rows[0].id as number;
    await expect(
      q(`insert into builds (finished, timestamp, jobset_id, job, drvpath, system, starttime) values (1, 1, ${jobsetId}, 'x', '/nix/store/a.drv', 'x86_64-linux', 1)`),
    ).rejects.toThrow(/builds_check/);
    const { rows } = await q(`insert into builds (finished, timestamp, jobset_id, job, drvpath, system) values (0, 1, ${jobsetId}, 'x', '/nix/store/a.drv', 'x86_64-linux') returning id, maxsilent, timeout, priority, globalpriority, keep`);
    expect(rows[0]).toMatchObject({ maxsilent: 3600, timeout: 36000, priority: 0, globalpriority: 0, keep: 0 });
    await expect(
      q(`insert into buildsteps (build, stepnr, type, drvpath, busy, status) values (${rows[0].id}, 1, 0, '/nix/store/a.drv', 0, 13)`),
    ).rejects.toThrow(/buildsteps_check/);
    await q("insert into failedpaths (path) values ('/nix/store/x')");
    await q("insert into failedpaths (path) values ('/nix/store/x')"); // idempotent by Hydra's rule
    expect((await q('select count(*)::int as n from failedpaths')).rows[0].n).toBe(1);
  });

  it('is checked without being altered, and a missing column fails with one clear line', async () => {
    const before = await describeCatalog(db.pool);
    expect(await checkSchema(db.pool)).toBe(87);
    expect(await describeCatalog(db.pool)).toEqual(before);
    await db.pool.query('alter table buildsteps drop column resolveddrvpath');
    await db.pool.query('alter table builds drop column closuresize');
    const err = await ensureSchema(db.pool).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(SchemaMismatchError);
    expect((err as SchemaMismatchError).code).toBe('SCHEMA_MISMATCH');
    expect((err as Error).message).not.toContain('\n');
    expect((err as SchemaMismatchError).missing).toEqual(['column builds.closuresize', 'column buildsteps.resolveddrvpath']);
    // Still nothing was created or restored.
    expect((await findMissing(db.pool)).length).toBe(2);
  });
});
