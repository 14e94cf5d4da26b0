/**
 * `hydrant gc-roots` against real PostgreSQL rows in Hydra's schema: the
 * roots hydra-update-gc-roots would keep are made, unwanted ones go only
 * once a day old, junk entries are reported and left, and a second run
 * changes nothing.
 */
import { existsSync, mkdirSync, readdirSync, writeFileSync } from 'node:fs';
import { basename, join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { updateGcRoots } from '../../src/cache/gc-roots-update.ts';
import { runCli } from '../helpers/cli.ts';
import { createTestDatabase, type TestDatabase } from '../helpers/db.ts';
import { createJobset } from '../helpers/hydra-rows.ts';
import { tempDir } from './fixtures.ts';

const DAY = 24 * 3600_000;

/** A store path of its own for each label (digits are Nix base32). */
const path = (n: number, name: string) => `/nix/store/${String(n).padStart(32, '0')}-${name}`;
const out = (b: string) => path(Number(b.slice(1)) * 2, `${b}-out`);
const drv = (b: string) => path(Number(b.slice(1)) * 2 + 1, `${b}.drv`);

describe('hydrant gc-roots', () => {
  let db: TestDatabase;
  let rootsDir: string;
  const ids = new Map<string, number>();

  beforeAll(async () => {
    db = await createTestDatabase();
    rootsDir = join(tempDir('hydrant-gc-roots-'), 'hydra-roots');
    const a = await createJobset(db.pool, 'p', 'a');
    await db.pool.query('update jobsets set keepnr = 2 where id = $1', [a]);
    // Disabled, hidden and not checked for a week: its evaluations keep nothing.
    const b = await createJobset(db.pool, 'p', 'b');
    await db.pool.query('update jobsets set enabled = 0, hidden = 1, lastcheckedtime = 0 where id = $1', [b]);
    const evalOf = async (jobset: number, hasNew: number) =>
      (
        await db.pool.query<{ id: number }>(
          `insert into jobsetevals (jobset_id, timestamp, checkouttime, evaltime, hasnewbuilds, hash) values ($1, 1, 0, 0, $2, 'h') returning id`,
          [jobset, hasNew],
        )
      ).rows[0]!.id;
    const e1 = await evalOf(a, 1);
    const e2 = await evalOf(a, 1);
    const e3 = await evalOf(a, 1);
    const e4 = await evalOf(a, 0); // newest, but no new builds: not one of the keepnr
    const e5 = await evalOf(a, 1); // has an unfinished build
    const eb = await evalOf(b, 1);
    const build = async (label: string, jobset: number, job: string, evals: number[], status: number | null, keep = 0) => {
      const finished = status === null ? 0 : 1;
      const { rows } = await db.pool.query<{ id: number }>(
        `insert into builds (finished, timestamp, jobset_id, job, drvpath, system, buildstatus, starttime, stoptime, keep)
         values ($1, 1, $2, $3, $4, 'x86_64-linux', $5, $6, $6, $7) returning id`,
        [finished, jobset, job, drv(label), status, finished ? 100 : null, keep],
      );
      const id = rows[0]!.id;
      ids.set(label, id);
      await db.pool.query(`insert into buildoutputs (build, name, path) values ($1, 'out', $2)`, [id, out(label)]);
      for (const e of evals) await db.pool.query('insert into jobsetevalmembers (eval, build, isnew) values ($1, $2, 1)', [e, id]);
    };
    await build('b1', a, 'x', [e1], 0); // superseded by b2
    await build('b2', a, 'x', [e2], 0); // in a kept evaluation
    await build('b3', a, 'x', [e3], 1); // failed in a kept evaluation: its derivation
    await build('b4', a, 'y', [e1], 0); // old evaluation, job gone
    await build('b5', a, 'z', [e3], 6); // failed with output: both
    await build('b6', a, 'w', [e5], null); // unfinished
    await build('b7', a, 'v', [e5], 0); // finished in an unfinished evaluation
    await build('b8', a, 'u', [e1], 0, 1); // keep
    await build('b9', a, 't', [e1], 1, 1); // keep, failed: nothing to root (Hydra keeps no derivation here)
    await build('b10', a, 'x2', [e1], 0); // the newest success of a job failing in a kept evaluation
    await build('b11', a, 'x2', [e3], 1);
    await build('b12', a, 's', [e4], 0); // only in the evaluation without new builds
    await build('b13', b, 'r', [eb], 0); // skipped jobset
    await build('b14', b, 'q', [eb], null); // unfinished, even in a skipped jobset
    mkdirSync(rootsDir, { recursive: true });
    // A root no build keeps, junk names, and a directory.
    writeFileSync(join(rootsDir, basename(out('b99'))), '');
    writeFileSync(join(rootsDir, 'not a store path'), '');
    mkdirSync(join(rootsDir, basename(path(7777, 'a-directory'))));
  });

  afterAll(() => db?.drop());

  const wanted = () =>
    new Set([
      ...['b2', 'b5', 'b7', 'b8', 'b10'].map((b) => basename(out(b))),
      ...['b3', 'b5', 'b6', 'b11', 'b14'].map((b) => basename(drv(b))),
    ]);
  const entries = () => new Set(readdirSync(rootsDir));
  const junk = [basename(path(7777, 'a-directory')), 'not a store path'];

  it('--dry-run lists the roots it would make and changes nothing', async () => {
    const before = entries();
    const r = await runCli(['gc-roots', '--db-url', db.url, '--roots-dir', rootsDir, '--dry-run']);
    expect(r.stderr).toBe('');
    expect(r.code).toBe(0);
    expect(new Set([...r.stdout.matchAll(/^would add root (\S+)$/gm)].map((m) => m[1]!))).toEqual(wanted());
    expect(r.stdout).toContain('ignored 2 entries that name no store path');
    expect(entries()).toEqual(before);
  });

  it('makes the roots Hydra keeps and leaves an unwanted root younger than a day', async () => {
    const r = await runCli(['gc-roots', '--db-url', db.url, '--roots-dir', rootsDir]);
    expect(r.stderr).toBe('');
    expect(r.code).toBe(0);
    expect(r.stdout).toMatch(new RegExp(`: 10 builds kept, ${wanted().size} roots wanted; added ${wanted().size}, removed 0, kept 1 unwanted`));
    expect(entries()).toEqual(new Set([...wanted(), basename(out('b99')), ...junk]));
  });

  it('a day later removes the unwanted root, keeps the junk, and then changes nothing', async () => {
    const later = new Date(Date.now() + DAY + 3600_000);
    const first = await updateGcRoots({ pool: db.pool, rootsDir, now: later });
    expect(first.removed).toEqual([basename(out('b99'))]);
    expect(first.created).toEqual([]);
    expect(first.junk).toEqual(junk);
    expect(entries()).toEqual(new Set([...wanted(), ...junk]));
    const again = await updateGcRoots({ pool: db.pool, rootsDir, now: later });
    expect(again.created).toEqual([]);
    expect(again.removed).toEqual([]);
    expect(again.recent).toEqual([]);
    expect(entries()).toEqual(new Set([...wanted(), ...junk]));
  });

  it('follows the database: a finished build stops rooting its derivation, a new keep roots its outputs', async () => {
    await db.pool.query('update builds set finished = 1, buildstatus = 0, starttime = 1, stoptime = 2 where id = $1', [ids.get('b6')]);
    await db.pool.query('update builds set keep = 1 where id = $1', [ids.get('b12')]);
    const later = new Date(Date.now() + DAY + 3600_000);
    const r = await updateGcRoots({ pool: db.pool, rootsDir, now: later });
    // e5 is now finished and newest: b6's outputs live, its derivation goes (the root file is older than a day by `later`).
    expect(new Set(r.created)).toEqual(new Set([basename(out('b6')), basename(out('b12'))]));
    expect(r.removed).toEqual([basename(drv('b6'))]);
    expect(existsSync(join(rootsDir, basename(drv('b6'))))).toBe(false);
  });
});
