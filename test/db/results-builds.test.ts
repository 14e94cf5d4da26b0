import { describe, expect, it } from 'vitest';
import { finishBuildCached, finishBuildSucceeded, type FinishBuildSucceeded } from '../../src/db/build-results.ts';
import { addFailedPaths, isFailedPath } from '../../src/db/failed-paths.ts';
import { withTransaction } from '../../src/db/pool.ts';
import { useTestDatabase } from '../helpers/db.ts';
import { queueBuild, useJobset } from '../helpers/hydra-rows.ts';

const DRV = '/nix/store/0000000000000000000000000000000a-hello.drv';
const OUT = '/nix/store/0000000000000000000000000000000b-hello';
const DOC = '/nix/store/0000000000000000000000000000000d-hello-doc';

describe('successful and cached ends of builds', () => {
  const db = useTestDatabase();
  const jobset = useJobset(db, 'proj', 'js');

  async function queueWithOutputs(): Promise<number> {
    const id = await queueBuild(db.pool, jobset.id, DRV, 'hello.x86_64-linux');
    await db.pool.query(
      `update builds set timestamp = 1700000000, size = 1, closuresize = 2, releasename = 'old' where id = $1`, [id]);
    await db.pool.query(`insert into buildoutputs (build, name, path) values ($1, 'out', null), ($1, 'doc', $2)`, [id, DOC]);
    return id;
  }

  async function build(id: number) {
    const { rows } = await db.pool.query(
      `select finished, buildstatus, starttime, stoptime, size, closuresize, releasename, iscachedbuild,
              notificationpendingsince
       from builds where id = $1`,
      [id],
    );
    return rows[0];
  }
  const outputs = async (id: number) =>
    (await db.pool.query('select name, path from buildoutputs where build = $1 order by name', [id])).rows;
  const products = async (id: number) =>
    (await db.pool.query(
      `select productnr, type, subtype, filesize, sha256hash, path, name, defaultpath
       from buildproducts where build = $1 order by productnr`, [id])).rows;
  const metrics = async (id: number) =>
    (await db.pool.query(
      'select name, unit, value, project, jobset, job, timestamp from buildmetrics where build = $1 order by name', [id])).rows;

  function success(id: number, over: Partial<FinishBuildSucceeded> = {}): FinishBuildSucceeded {
    return {
      buildId: id, status: 0, startTime: 100, stopTime: 160, size: 4096, closureSize: 2 ** 40, releaseName: 'hello-2.12',
      isCachedBuild: false, outputs: [{ name: 'out', path: OUT }, { name: 'doc', path: DOC }],
      products: [
        { type: 'file', subtype: 'source-dist', fileSize: 12345, sha256hash: 'ab'.repeat(32), path: `${OUT}/hello.tar.gz`,
          name: 'hello.tar.gz', defaultPath: null },
        { type: 'doc', subtype: 'manual', fileSize: null, sha256hash: null, path: `${DOC}/share/doc`, name: 'doc', defaultPath: 'index.html' },
      ],
      metrics: [
        { name: 'closure.size', value: 1.5e9, unit: 'bytes' },
        { name: 'tests.passed', value: 42, unit: null },
      ],
      ...over,
    };
  }

  it('writes the build row, outputs, products numbered 1..n and metrics with the build\'s job data', async () => {
    const id = await queueWithOutputs();
    expect(await withTransaction(db.pool, (c) => finishBuildSucceeded(c, success(id)))).toBe(true);
    expect(await build(id)).toEqual({
      finished: 1, buildstatus: 0, starttime: 100, stoptime: 160, size: 4096, closuresize: 2 ** 40,
      releasename: 'hello-2.12', iscachedbuild: 0, notificationpendingsince: 160,
    });
    expect(await outputs(id)).toEqual([{ name: 'doc', path: DOC }, { name: 'out', path: OUT }]);
    expect(await products(id)).toEqual([
      { productnr: 1, type: 'file', subtype: 'source-dist', filesize: 12345, sha256hash: 'ab'.repeat(32),
        path: `${OUT}/hello.tar.gz`, name: 'hello.tar.gz', defaultpath: null },
      { productnr: 2, type: 'doc', subtype: 'manual', filesize: null, sha256hash: null, path: `${DOC}/share/doc`,
        name: 'doc', defaultpath: 'index.html' },
    ]);
    expect(await metrics(id)).toEqual([
      { name: 'closure.size', unit: 'bytes', value: 1.5e9, project: 'proj', jobset: 'js', job: 'hello.x86_64-linux', timestamp: 1700000000 },
      { name: 'tests.passed', unit: null, value: 42, project: 'proj', jobset: 'js', job: 'hello.x86_64-linux', timestamp: 1700000000 },
    ]);
  });

  it('ends a build exactly once: a second finish returns false and changes nothing', async () => {
    const id = await queueWithOutputs();
    await withTransaction(db.pool, (c) => finishBuildSucceeded(c, success(id)));
    const snapshot = [await build(id), await outputs(id), await products(id), await metrics(id)];
    const again = await withTransaction(db.pool, (c) =>
      finishBuildSucceeded(c, success(id, {
        status: 6, startTime: 1, stopTime: 2, size: 1, releaseName: 'other', outputs: [{ name: 'out', path: '/nix/store/x' }],
        products: [], metrics: [{ name: 'other', value: 1, unit: null }],
      })),
    );
    expect(again).toBe(false);
    expect(await withTransaction(db.pool, (c) => finishBuildCached(c, { buildId: id, now: 5, outputs: [{ name: 'out', path: '/nix/store/y' }] })))
      .toBe(false);
    expect([await build(id), await outputs(id), await products(id), await metrics(id)]).toEqual(snapshot);
  });

  it('replaces products and metrics of a restarted build; a repeated metric keeps its last value', async () => {
    const id = await queueWithOutputs();
    await withTransaction(db.pool, (c) => finishBuildSucceeded(c, success(id)));
    await db.pool.query('update builds set finished = 0 where id = $1', [id]); // Hydra's "restart"
    await withTransaction(db.pool, (c) =>
      finishBuildSucceeded(c, success(id, {
        status: 6, startTime: 200, stopTime: 300, releaseName: null, isCachedBuild: true,
        products: [{ type: 'nix-build', subtype: '', fileSize: null, sha256hash: null, path: OUT, name: 'hello', defaultPath: null }],
        metrics: [{ name: 'm', value: 1, unit: 's' }, { name: 'm', value: 2, unit: 'ms' }],
      })),
    );
    expect(await build(id)).toMatchObject({ finished: 1, buildstatus: 6, starttime: 200, stoptime: 300, releasename: null,
      iscachedbuild: 1, notificationpendingsince: 300 });
    expect(await products(id)).toEqual([
      { productnr: 1, type: 'nix-build', subtype: '', filesize: null, sha256hash: null, path: OUT, name: 'hello', defaultpath: null },
    ]);
    expect(await metrics(id)).toEqual([
      { name: 'm', unit: 'ms', value: 2, project: 'proj', jobset: 'js', job: 'hello.x86_64-linux', timestamp: 1700000000 },
    ]);
  });

  it('refuses statuses other than 0 and 6 for a success', async () => {
    const id = await queueWithOutputs();
    await expect(withTransaction(db.pool, (c) => finishBuildSucceeded(c, success(id, { status: 1 })))).rejects.toThrow(RangeError);
    expect(await build(id)).toMatchObject({ finished: 0 });
  });

  it('finishBuildCached: cached success at `now`, outputs filled, exactly once', async () => {
    const id = await queueWithOutputs();
    expect(await withTransaction(db.pool, (c) =>
      finishBuildCached(c, { buildId: id, now: 1234, outputs: [{ name: 'out', path: OUT }, { name: 'doc', path: null }] }))).toBe(true);
    expect(await build(id)).toEqual({
      finished: 1, buildstatus: 0, starttime: 1234, stoptime: 1234, size: 1, closuresize: 2, releasename: 'old',
      iscachedbuild: 1, notificationpendingsince: 1234,
    });
    // A null path (unknown) does not erase the one the evaluator knew.
    expect(await outputs(id)).toEqual([{ name: 'doc', path: DOC }, { name: 'out', path: OUT }]);
    expect(await withTransaction(db.pool, (c) => finishBuildCached(c, { buildId: id, now: 9999, outputs: [] }))).toBe(false);
    expect(await build(id)).toMatchObject({ starttime: 1234, stoptime: 1234 });
  });

  it('finishBuildCached can carry what an earlier build of the same outputs knew', async () => {
    const id = await queueWithOutputs();
    await withTransaction(db.pool, (c) =>
      finishBuildCached(c, {
        buildId: id, now: 50, outputs: [{ name: 'out', path: OUT }], size: 10, closureSize: 20, releaseName: 'hello-1',
        products: [{ type: 'file', subtype: 'x', fileSize: 1, sha256hash: null, path: `${OUT}/f`, name: 'f', defaultPath: null }],
        metrics: [{ name: 'n', value: 3, unit: null }],
      }),
    );
    expect(await build(id)).toMatchObject({ size: 10, closuresize: 20, releasename: 'hello-1', iscachedbuild: 1 });
    expect((await products(id)).map((p) => [p.productnr, p.path])).toEqual([[1, `${OUT}/f`]]);
    expect((await metrics(id)).map((m) => [m.name, m.value])).toEqual([['n', 3]]);
  });
});

describe('FailedPaths', () => {
  const db = useTestDatabase();

  it('is idempotent, tolerates duplicates in one call, and answers membership', async () => {
    await withTransaction(db.pool, (c) => addFailedPaths(c, ['/nix/store/a', '/nix/store/b', '/nix/store/a']));
    await withTransaction(db.pool, (c) => addFailedPaths(c, ['/nix/store/b', '/nix/store/c']));
    await withTransaction(db.pool, (c) => addFailedPaths(c, []));
    const { rows } = await db.pool.query('select path from failedpaths order by path');
    expect(rows.map((r) => r.path)).toEqual(['/nix/store/a', '/nix/store/b', '/nix/store/c']);
    expect(await isFailedPath(db.pool, ['/nix/store/a', '/nix/store/z', '/nix/store/c', '/nix/store/a'])).toEqual(
      new Set(['/nix/store/a', '/nix/store/c']),
    );
    expect(await isFailedPath(db.pool, [])).toEqual(new Set());
  });

  it('works outside a transaction block and with more paths than one chunk', async () => {
    const client = await db.pool.connect();
    try {
      const many = Array.from({ length: 2500 }, (_, i) => `/nix/store/many-${i}`);
      await addFailedPaths(client, [...many, ...many.slice(0, 10)]);
      expect((await isFailedPath(client, many)).size).toBe(2500);
    } finally {
      client.release();
    }
  });

  it('survives two transactions inserting the same path at once', async () => {
    const a = await db.pool.connect();
    const b = await db.pool.connect();
    try {
      await a.query('begin');
      await b.query('begin');
      await addFailedPaths(a, ['/nix/store/race', '/nix/store/race-a']);
      // b's insert waits on a's uncommitted key, then collides once a commits.
      const pending = addFailedPaths(b, ['/nix/store/race-b', '/nix/store/race']);
      await new Promise((r) => setTimeout(r, 100));
      await a.query('commit');
      await pending;
      await b.query('commit');
    } finally {
      a.release();
      b.release();
    }
    expect(await isFailedPath(db.pool, ['/nix/store/race', '/nix/store/race-a', '/nix/store/race-b'])).toEqual(
      new Set(['/nix/store/race', '/nix/store/race-a', '/nix/store/race-b']),
    );
  });
});
