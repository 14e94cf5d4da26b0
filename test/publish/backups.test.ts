/**
 * Backup buckets: the `[[s3Backup]]` tables as configured and resolved, and
 * the uploader against a real database and a `file://` target with a
 * prefix (the same code as for `s3://`, which test/e2e/s3-backup.test.ts
 * runs against radosgw).
 */
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { loadRunnerConfig } from '../../src/config/runner-config.ts';
import { BackupUploader, resolveBackupTarget, resolveBackupTargets, type BackupBucketConfig } from '../../src/publish/backups.ts';
import { WorkerPool } from '../../src/workers/pool.ts';
import { buildFixtures, generateKey, type Fixtures } from '../cache/fixtures.ts';
import { createTestDatabase, type TestDatabase } from '../helpers/db.ts';
import { createJobset } from '../helpers/hydra-rows.ts';
import { runCli } from '../helpers/cli.ts';
import { quietLog, waitFor } from '../helpers/runtime.ts';

const dir = mkdtempSync(join(tmpdir(), 'hydrant-backup-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

function config(text: string) {
  const p = join(dir, `c-${Math.random().toString(36).slice(2)}.toml`);
  writeFileSync(p, text);
  return () => loadRunnerConfig(p, {}, {});
}

const table = (over: Partial<BackupBucketConfig>): BackupBucketConfig => ({ jobs: '.*', prefix: '', retryInS: 30, ...over });

describe('[[s3Backup]] tables', () => {
  it('take name or store, jobs, compression, prefix, secretKey and retryInS', () => {
    const c = config('[[s3Backup]]\nname = "bk"\njobs = "p:j:.*"\n[[s3Backup]]\nstore = "file:///tmp/x"\njobs = ".*"\ncompression = "xz"\nprefix = "a/b/"\nsecretKey = "/k"\nretryInS = 5\n')();
    expect(c.s3Backup).toEqual([
      { name: 'bk', jobs: 'p:j:.*', prefix: '', retryInS: 30 },
      { store: 'file:///tmp/x', jobs: '.*', compression: 'xz', prefix: 'a/b/', secretKey: '/k', retryInS: 5 },
    ]);
  });

  it.each([
    ['name = "a"\nstore = "s3://a"\njobs = ".*"', /set exactly one of name \(a bucket\) and store/],
    ['jobs = ".*"', /set exactly one of name/],
    ['name = "a"\njobs = "("', /jobs: is not a valid regular expression/],
    ['name = "a"\njobs = ".*"\nprefix = "cache"', /prefix: must be empty or end in \//],
    ['name = "a"\njobs = ".*"\nprefix = "a/../"', /prefix: must not contain \.\./],
    ['name = "a"\njobs = ".*"\ncompression = "gzip"', /compression/],
    ['store = "http://x"\njobs = ".*"', /must be an s3:\/\/ or file:\/\/ store URI/],
    ['name = "a"\njobs = ".*"\nbucket = "b"', /bucket/],
  ])('refuse %j', (body, message) => {
    expect(config(`[[s3Backup]]\n${body}\n`)).toThrow(message);
  });
});

describe('resolving a backup target', () => {
  let key: { secretFile: string; publicKey: string };
  beforeAll(async () => {
    key = await generateKey(dir, 'runner-key');
  });

  it("signs with the runner's key and compresses with bzip2 unless told otherwise", () => {
    const t = resolveBackupTarget(table({ store: `file://${dir}/c1`, prefix: 'p/' }), key.secretFile);
    expect(t.id).toBe(`file://${dir}/c1/p/`);
    expect(t.store.compression).toBe('bzip2');
    expect(t.store.secretKeyFile).toBe(key.secretFile);
    const own = resolveBackupTarget(table({ name: 'bucket', compression: 'none', secretKey: key.secretFile }), undefined);
    expect(own.store).toMatchObject({ scheme: 's3', bucket: 'bucket', compression: 'none', secretKeyFile: key.secretFile });
    expect(resolveBackupTarget(table({ store: `file://${dir}/c2?compression=zstd` }), key.secretFile).store.compression).toBe('zstd');
  });

  it('matches the jobs regex against the whole project:jobset:job', () => {
    const { jobs } = resolveBackupTarget(table({ name: 'b', jobs: 'p:j:top|p:k:.*' }), key.secretFile);
    expect(['p:j:top', 'p:k:x'].map((s) => jobs.test(s))).toEqual([true, true]);
    expect(['p:j:top2', 'xp:j:top', 'p:kk:x'].map((s) => jobs.test(s))).toEqual([false, false, false]);
  });

  it('refuses one target configured twice', () => {
    expect(() => resolveBackupTargets([table({ store: 's3://b?region=x', jobs: 'a' }), table({ name: 'b', jobs: 'c' })], key.secretFile)).toThrow('s3Backup: s3://b/ is configured twice');
    expect(resolveBackupTargets([table({ name: 'b' }), table({ name: 'b', prefix: 'other/' })], key.secretFile).map((t) => t.id)).toEqual(['s3://b/', 's3://b/other/']);
  });

  it('refuses a backup it could not sign, and contradictions with the URI', () => {
    expect(() => resolveBackupTarget(table({ name: 'b' }), undefined)).toThrow('s3Backup b: no signing key: set secretKey, or a secret-key= on a remoteStoreAddr entry');
    expect(() => resolveBackupTarget(table({ store: 's3://b?compression=xz', compression: 'bzip2' }), key.secretFile)).toThrow(/contradicts the URI's compression=xz/);
    expect(() => resolveBackupTarget(table({ store: `s3://b?secret-key=${key.secretFile}`, secretKey: key.secretFile }), undefined)).toThrow(/not both/);
  });
});

describe('the uploader on a file:// target', () => {
  let db: TestDatabase;
  let pool: WorkerPool;
  let fx: Fixtures;
  let key: { secretFile: string; publicKey: string };
  let jobset: number;

  beforeAll(async () => {
    [db, fx, key] = await Promise.all([createTestDatabase(), buildFixtures(dir), generateKey(dir, 'uploader-key')]);
    pool = new WorkerPool({ threads: 2 });
    jobset = await createJobset(db.pool, 'proj', 'main');
  }, 120_000);

  afterAll(async () => {
    await pool?.close();
    await db?.drop();
  });

  async function finishedBuild(job: string, status: number, stoptime: number, path: string): Promise<number> {
    const { rows } = await db.pool.query<{ id: number }>(
      `insert into builds (finished, timestamp, jobset_id, job, drvpath, system, starttime, stoptime, buildstatus)
       values (1, $3, $1, $2, '/nix/store/00000000000000000000000000000000-x.drv', 'x86_64-linux', $3, $3, $4) returning id`,
      [jobset, job, stoptime, status],
    );
    await db.pool.query("insert into buildoutputs (build, name, path) values ($1, 'out', $2)", [rows[0]!.id, path]);
    return rows[0]!.id;
  }

  it('a backup bucket with no key to sign with stops serve at start, in one line', async () => {
    const p = join(dir, 'unsigned.toml');
    writeFileSync(p, `dbUrl = "${db.url}"\nhydraDataDir = "${join(dir, 'unsigned')}"\ngrpcListen = "127.0.0.1:0"\nhttpListen = ""\n[[s3Backup]]\nstore = "file://${join(dir, 'unsigned-backup')}"\njobs = ".*"\n`);
    const r = await runCli(['serve', '--config', p]);
    expect(r.code).toBe(1);
    expect(r.stderr.split('\n').filter((l) => l.startsWith('hydrant:'))).toEqual([
      `hydrant: CONFIG_INVALID: s3Backup file://${join(dir, 'unsigned-backup')}: no signing key: set secretKey, or a secret-key= on a remoteStoreAddr entry`,
    ]);
  }, 60_000);

  it('copies the closure of matching builds ended with status 0 or 6 from its start on, under the prefix, signed', async () => {
    const now = Math.floor(Date.now() / 1000);
    const before = await finishedBuild('user', 0, now - 600, fx.paths.user);
    const target = resolveBackupTarget(table({ store: `file://${join(dir, 'backup')}`, jobs: 'proj:main:(user|single|self)', prefix: 'sub/', compression: 'xz' }), key.secretFile);
    const uploader = new BackupUploader({ db: db.pool, dbUrl: db.url, pool, targets: [target], log: quietLog });
    await uploader.start();
    try {
      const user = await finishedBuild('user', 0, now + 1, fx.paths.user);
      const single = await finishedBuild('single', 6, now + 1, fx.paths.single);
      const failed = await finishedBuild('self', 1, now + 1, fx.paths.self);
      const other = await finishedBuild('multi', 0, now + 1, fx.paths.multiOut);
      await db.pool.query("select pg_notify('build_finished', $1)", [[user, single, failed, other].join('\t')]);
      const narinfo = (p: string) => join(dir, 'backup', 'sub', `${p.slice(11, 43)}.narinfo`);
      await waitFor(() => existsSync(narinfo(fx.paths.user)) && existsSync(narinfo(fx.paths.single)), 60_000, 'the backups');
      // The user job's closure (tree too), signed; not the failed build, not the unmatched job.
      expect(existsSync(narinfo(fx.paths.tree))).toBe(true);
      expect(readFileSync(narinfo(fx.paths.user), 'utf8')).toMatch(/^Sig: uploader-key:/m);
      expect(readFileSync(narinfo(fx.paths.user), 'utf8')).toMatch(/^Compression: xz$/m);
      expect(existsSync(join(dir, 'backup', 'sub', 'nix-cache-info'))).toBe(true);
      expect(existsSync(narinfo(fx.paths.self))).toBe(false);
      expect(existsSync(narinfo(fx.paths.multiOut))).toBe(false);
      const queued = await db.pool.query('select build, state from hydrant.backup_queue order by build');
      expect(queued.rows).toEqual([
        { build: user, state: 'done' },
        { build: single, state: 'done' },
      ]);
      // The build that ended before the target existed is not backed up.
      expect(queued.rows.some((r: { build: number }) => r.build === before)).toBe(false);
      expect(await uploader.status()).toMatchObject({ targets: [{ target: `file://${join(dir, 'backup')}/sub/`, done: 2, pending: 0, failing: 0, thisRun: { builds: 2, failures: 0 } }], failing: [] });
    } finally {
      await uploader.stop();
    }
  }, 120_000);
});
