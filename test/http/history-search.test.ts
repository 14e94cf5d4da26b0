import fc from 'fast-check';
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { searchBuilds } from '../../src/db/build-search.ts';
import { SearchTimeoutError } from '../../src/errors/index.ts';
import { HttpError } from '../../src/errors/index.ts';
import { Router } from '../../src/http/router.ts';
import { registerHistoryRoutes } from '../../src/http/routes/history.ts';
import { startHttpApi, type HttpApi } from '../../src/http/server.ts';
import { sql } from '../../src/db/sql.ts';
import { parseBuildSearch, SEARCH_MAX_LENGTH } from '../../src/status/build-search.ts';
import { useTestDatabase } from '../helpers/db.ts';
import { createJobset } from '../helpers/hydra-rows.ts';
import { quietLog } from '../helpers/runtime.ts';

type Json = Record<string, any>; // eslint-disable-line @typescript-eslint/no-explicit-any

// Store paths of a fixed, valid shape: 32 characters of Nix's base 32, then a name.
const hashOf = (c: string): string => c.repeat(32);
const path = (c: string, name: string): string => `/nix/store/${hashOf(c)}-${name}`;

interface Row {
  id: number;
  drv: string;
  project: string;
  jobset: string;
  job: string;
  nixname: string | null;
  machines: string[];
}

describe('history search (GET /status/history?q=)', () => {
  const db = useTestDatabase();
  let http: HttpApi;
  let base: string;
  const rows: Row[] = [];
  const ids: Record<string, number> = {};

  /** A build row with its outputs and step rows (each step: its derivation, machine and outputs). */
  async function build(
    name: string,
    jobsetId: number,
    b: { job: string; drv: string; nixname?: string; status?: number; outputs?: string[]; steps?: { drv: string; machine: string; outputs?: string[] }[] },
  ): Promise<void> {
    const [project, jobset] = (await db.pool.query('select project, name from jobsets where id = $1', [jobsetId])).rows.map((r) => [r.project, r.name])[0]!;
    const { rows: r } = await db.pool.query(
      `insert into builds (finished, buildstatus, timestamp, starttime, stoptime, jobset_id, job, drvpath, nixname, system)
       values ($1, $2, 1700000000, case when $1 = 1 then 1700000001 end, case when $1 = 1 then 1700000002 end, $3, $4, $5, $6, 'x86_64-linux') returning id`,
      [b.status === undefined ? 0 : 1, b.status ?? null, jobsetId, b.job, b.drv, b.nixname ?? null],
    );
    const id = r[0].id as number;
    ids[name] = id;
    for (const [i, o] of (b.outputs ?? []).entries()) await db.pool.query('insert into buildoutputs (build, name, path) values ($1, $2, $3)', [id, i ? `out${i}` : 'out', o]);
    for (const [i, s] of (b.steps ?? []).entries()) {
      await db.pool.query(`insert into buildsteps (build, stepnr, type, drvpath, busy, status, machine) values ($1, $2, 0, $3, 0, 0, $4)`, [id, i + 1, s.drv, s.machine]);
      for (const o of s.outputs ?? []) await db.pool.query(`insert into buildstepoutputs (build, stepnr, name, path) values ($1, $2, 'out', $3)`, [id, i + 1, o]);
    }
    rows.push({ id, drv: b.drv, project, jobset, job: b.job, nixname: b.nixname ?? null, machines: (b.steps ?? []).map((s) => s.machine) });
  }

  beforeAll(async () => {
    const nixpkgs = await createJobset(db.pool, 'nixpkgs', 'trunk');
    const hydra = await createJobset(db.pool, 'hydra', 'main');
    await build('hello', nixpkgs, {
      job: 'hello.x86_64-linux',
      drv: path('a', 'hello-2.12.drv'),
      nixname: 'hello-2.12',
      status: 0,
      outputs: [path('b', 'hello-2.12')],
      steps: [{ drv: path('a', 'hello-2.12.drv'), machine: 'ssh://builder@alpha.example.org', outputs: [path('b', 'hello-2.12')] }],
    });
    await build('curl', nixpkgs, {
      job: 'curl',
      drv: path('c', 'curl-8.drv'),
      nixname: 'curl-8',
      status: 1,
      outputs: [path('d', 'curl-8'), path('f', 'curl-8-dev')],
      steps: [
        { drv: path('g', 'openssl-3.drv'), machine: 'beta', outputs: [path('h', 'openssl-3')] },
        { drv: path('c', 'curl-8.drv'), machine: 'ssh://builder@alpha.example.org' },
      ],
    });
    // Characters LIKE and SQL treat specially, in a job's name: each must match only itself.
    await build('weird', hydra, { job: `odd%_'"\\job`, drv: path('i', 'odd.drv') });
    await build('fooXbar', hydra, { job: 'foo', drv: path('j', 'fooXbar.drv'), status: 0 });
    for (let n = 0; n < 23; n++) await build(`page${n}`, hydra, { job: `page-${n}`, drv: path('k', `page-${n}.drv`), status: n % 2 });
    const router = new Router(() => {
      throw new HttpError(403, 'read-only');
    });
    registerHistoryRoutes(router, { db: db.pool, scheduler: () => null });
    http = await startHttpApi(router, '127.0.0.1:0', quietLog);
    base = `http://127.0.0.1:${http.port}`;
  });
  afterAll(async () => {
    await http?.close();
  });

  const get = async (query: string): Promise<{ status: number; body: Json }> => {
    const r = await fetch(`${base}/status/history?${query}`);
    return { status: r.status, body: (await r.json()) as Json };
  };
  /** The ids `q` finds (all pages' worth), newest first. */
  const find = async (q: string, extra = ''): Promise<number[]> => {
    const r = await get(`q=${encodeURIComponent(q)}&limit=500${extra}`);
    expect(r.status, `${q}: ${JSON.stringify(r.body)}`).toBe(200);
    return r.body.builds.map((b: Json) => b.id);
  };

  it('finds a build by its id, #id or a Hydra build URL', async () => {
    expect(await find(String(ids.curl))).toEqual([ids.curl]);
    expect(await find(`#${ids.hello}`)).toEqual([ids.hello]);
    expect(await find(`https://hydra.example.org/build/${ids.hello}/nixlog/1`)).toEqual([ids.hello]);
    expect(await find('99999999999')).toEqual([]); // past Builds.id's range: nothing, not an error
    const r = await get(`q=${ids.curl}`);
    expect(r.body.search).toEqual({ id: ids.curl, path: null, part: null, text: null });
    expect(r.body.builds[0]).toMatchObject({ id: ids.curl, project: 'nixpkgs', jobset: 'trunk', job: 'curl', statusName: 'failed', link: `/status/build/${ids.curl}` });
  });

  it('finds builds by any part of project:jobset:job or the Nix name, ignoring case', async () => {
    expect(await find('nixpkgs:trunk:hello.x86_64-linux')).toEqual([ids.hello]);
    expect(await find('trunk:cu')).toEqual([ids.curl]);
    expect(await find('HELLO')).toEqual([ids.hello]);
    expect(await find('hello-2.12')).toEqual([ids.hello]);
    expect(await find('hello-2.12.drv')).toEqual([ids.hello]); // part of a derivation's path, without its hash
    expect(await find('nixpkgs')).toEqual([ids.curl, ids.hello]);
  });

  it('finds builds by a derivation or output path, a file under one, a hash part or a base name', async () => {
    expect(await find(path('a', 'hello-2.12.drv'))).toEqual([ids.hello]);
    expect(await find(path('b', 'hello-2.12'))).toEqual([ids.hello]);
    expect(await find(`${path('b', 'hello-2.12')}/bin/hello`)).toEqual([ids.hello]);
    expect(await find(path('f', 'curl-8-dev'))).toEqual([ids.curl]);
    // A dependency built as a step of curl: its derivation and its output lead to curl.
    expect(await find(path('g', 'openssl-3.drv'))).toEqual([ids.curl]);
    expect(await find(path('h', 'openssl-3'))).toEqual([ids.curl]);
    expect(await find(hashOf('c'))).toEqual([ids.curl]);
    expect(await find(hashOf('d'))).toEqual([ids.curl]);
    expect(await find(`${hashOf('b')}-hello-2.12`)).toEqual([ids.hello]);
    expect(await find(`${hashOf('a')}-hello-2.12.drv`)).toEqual([ids.hello]);
    expect(await find(path('z', 'nothing'))).toEqual([]);
  });

  it("finds the builds that had a step on a machine, by part of the machine's name", async () => {
    expect(await find('alpha')).toEqual([ids.curl, ids.hello]);
    expect(await find('beta')).toEqual([ids.curl]);
    expect(await find('ssh://builder@alpha.example.org')).toEqual([ids.curl, ids.hello]);
  });

  it('reads hostile text literally, and bounds it', async () => {
    expect(await find('%')).toEqual([ids.weird]);
    expect(await find('_')).toEqual([ids.weird, ids.hello]); // a literal underscore, not "any character"
    expect(await find("'")).toEqual([ids.weird]);
    expect(await find('"')).toEqual([ids.weird]);
    expect(await find('\\')).toEqual([ids.weird]);
    expect(await find(`odd%_'"\\job`)).toEqual([ids.weird]);
    expect(await find("x'; delete from builds; --")).toEqual([]);
    expect(await find('/nix/store/%')).toEqual([]);
    // A base name whose underscore would be LIKE's wildcard: it matches only itself.
    expect(await find(`${hashOf('j')}-foo_bar.drv`)).toEqual([]);
    expect(await find(`${hashOf('j')}-fooXbar.drv`)).toEqual([ids.fooXbar]);
    expect(await find('a'.repeat(SEARCH_MAX_LENGTH))).toEqual([]);
    const long = await get(`q=${'a'.repeat(SEARCH_MAX_LENGTH + 1)}`);
    expect(long.status).toBe(400);
    expect(long.body.error).toContain(`at most ${SEARCH_MAX_LENGTH}`);
    expect((await get('q=a%00b')).status).toBe(400);
    expect((await get('q=%E0%A4%A')).status).toBe(200); // malformed escapes decode to U+FFFD: a search like any other
    expect((await db.pool.query('select count(*)::int as n from builds')).rows[0].n).toBe(rows.length);
  });

  it('pages a search as the history is paged, and combines it with the filters', async () => {
    const all = await find('page-');
    expect(all).toHaveLength(23);
    expect(all).toEqual([...all].sort((a, b) => b - a));
    const pages: number[] = [];
    for (let offset = 0; ; offset += 10) {
      const r = await get(`q=page-&limit=10&offset=${offset}`);
      pages.push(...r.body.builds.map((b: Json) => b.id));
      expect(r.body).toMatchObject({ offset, limit: 10 });
      if (!r.body.more) break;
      expect(r.body.builds).toHaveLength(10);
    }
    expect(pages).toEqual(all);
    expect(await find('nixpkgs', '&status=failed')).toEqual([ids.curl]);
    expect(await find('page-', '&status=failed')).toHaveLength(11);
    expect(await find('alpha', '&project=hydra')).toEqual([]);
    // The largest offset the API takes: an empty page, not an integer overflow.
    const far = await get(`q=page-&offset=${Number.MAX_SAFE_INTEGER}`);
    expect(far.status).toBe(200);
    expect(far.body).toMatchObject({ builds: [], more: false });
    expect((await get(`q=${hashOf('k')}&offset=${Number.MAX_SAFE_INTEGER}&limit=500`)).body.builds).toEqual([]);
    expect((await get(`offset=${Number.MAX_SAFE_INTEGER}`)).body.builds).toEqual([]); // and without q
    expect(await find(hashOf('k'), '&job=page-1')).toHaveLength(11); // page-1, page-10 … page-19
  });

  it('finds exactly the builds whose name, Nix name, derivation path or machines contain the text (any text)', async () => {
    const oracle = (q: string): number[] => {
      const s = q.trim().toLowerCase();
      return rows
        .filter((r) => `${r.project}:${r.jobset}:${r.job}`.toLowerCase().includes(s) || (r.nixname ?? '').toLowerCase().includes(s) || r.drv.toLowerCase().includes(s) || r.machines.some((m) => m.toLowerCase().includes(s)))
        .map((r) => r.id)
        .sort((a, b) => b - a);
    };
    const text = fc.string({ unit: fc.constantFrom(...'aeghlpx-._%\\\'":/ 1_'.split('')), minLength: 1, maxLength: 6 });
    await fc.assert(
      fc.asyncProperty(text, async (q) => {
        const s = parseBuildSearch(q);
        fc.pre(s !== null && s.text !== null);
        expect(await find(q)).toEqual(oracle(q));
      }),
      { numRuns: 60 },
    );
  });

  it('reads store paths and ids through indexes (no sequential scan of a table)', async () => {
    const c = await db.pool.connect();
    try {
      await c.query('set enable_seqscan = off');
      const plan = async (q: string): Promise<string> => {
        const s = parseBuildSearch(q)!;
        const { rows: p } = await c.query(`explain ${sql('history/search-builds')}`, [s.id, s.path, s.part, s.text, null, null, null, null, null, null, 51, 0]);
        return p.map((r) => r['QUERY PLAN']).join('\n');
      };
      expect(await plan(path('g', 'openssl-3.drv'))).not.toMatch(/Seq Scan on (builds|buildoutputs|buildsteps|buildstepoutputs)\b/);
      expect(await plan(String(ids.hello))).not.toMatch(/Seq Scan on builds\b/);
      // A hash part: derivations through Hydra's trigram index (the test databases have pg_trgm).
      expect(await plan(hashOf('c'))).toMatch(/Bitmap Index Scan on indextrgmbuildsondrvpath/);
      // Text: the builds walked newest first by their primary key, the walk cut at the page's end.
      expect(await plan('alpha')).toMatch(/Limit[\s\S]*Index Scan Backward using builds_pkey on builds/);
    } finally {
      await c.query('reset enable_seqscan');
      c.release();
    }
  });

  it('runs two searches at once at most: a third is refused at once with a 503, the two finish', async () => {
    const holder = new pg.Client({ connectionString: db.url });
    await holder.connect();
    try {
      await holder.query('begin');
      await holder.query('lock table builds in access exclusive mode');
      const a = get('q=hello');
      const b = get('q=curl');
      // Both are in the database, waiting on the lock.
      await expect
        .poll(async () => (await db.pool.query("select count(*)::int as n from pg_stat_activity where wait_event_type = 'Lock' and datname = current_database()")).rows[0].n, { timeout: 10_000 })
        .toBe(2);
      const third = await get('q=alpha');
      expect(third.status).toBe(503);
      expect(third.body.error).toContain('2 searches are running');
      const plain = get('limit=1'); // the history without q is not limited (it waits on the lock too)
      await holder.query('rollback');
      expect((await plain).status).toBe(200);
      expect((await a).body.builds.map((x: Json) => x.id)).toEqual([ids.hello]);
      expect((await b).body.builds.map((x: Json) => x.id)).toEqual([ids.curl]);
      expect(await find('alpha')).toEqual([ids.curl, ids.hello]); // the slots are free again
    } finally {
      await holder.end();
    }
  });

  it('gives up past its time bound with SEARCH_TIMEOUT, leaving the connection usable', async () => {
    const holder = new pg.Client({ connectionString: db.url });
    await holder.connect();
    try {
      // The search waits on a lock the holder keeps: statement_timeout ends it.
      await holder.query('begin');
      await holder.query('lock table builds in access exclusive mode');
      const search = parseBuildSearch('hello')!;
      const err = await searchBuilds(db.pool, search, {}, 10, 0, 200).catch((e: unknown) => e);
      expect(err).toBeInstanceOf(SearchTimeoutError);
      expect((err as SearchTimeoutError).code).toBe('SEARCH_TIMEOUT');
      await holder.query('rollback');
      // The bound was the search's own (set local): the pool's connections run unbounded statements again.
      const { rows: t } = await db.pool.query('show statement_timeout');
      expect(t[0].statement_timeout).toBe('0');
      expect((await searchBuilds(db.pool, search, {}, 10, 0, 200)).map((r) => r.id)).toEqual([ids.hello]);
    } finally {
      await holder.end();
    }
  });
});

describe('reading what was typed (parseBuildSearch)', () => {
  it('sets exactly one kind, or refuses with a 400, for any text', () => {
    fc.assert(
      fc.property(fc.oneof(fc.string({ maxLength: SEARCH_MAX_LENGTH + 20 }), fc.string({ unit: 'binary', maxLength: 50 })), (q) => {
        let s;
        try {
          s = parseBuildSearch(q);
        } catch (err) {
          expect(err).toBeInstanceOf(HttpError);
          expect((err as HttpError).status).toBe(400);
          return;
        }
        if (s === null) {
          expect(q.trim()).toBe('');
          return;
        }
        expect([s.id, s.path, s.part, s.text].filter((v) => v !== null)).toHaveLength(1);
        if (s.id !== null) expect(Number.isSafeInteger(s.id) && s.id >= 0 && s.id < 2 ** 31).toBe(true);
        if (s.text !== null) expect(s.text.length).toBeLessThanOrEqual(SEARCH_MAX_LENGTH);
      }),
      { numRuns: 2000 },
    );
  });

  it('reads ids, paths, hash parts and text', () => {
    expect(parseBuildSearch(' #42 ')).toEqual({ id: 42, path: null, part: null, text: null });
    expect(parseBuildSearch('http://hydra/build/7?x=1')?.id).toBe(7);
    expect(parseBuildSearch(`${path('a', 'x')}/bin/y`)?.path).toBe(path('a', 'x'));
    expect(parseBuildSearch('/etc/passwd')?.path).toBe('/etc/passwd');
    expect(parseBuildSearch(hashOf('a'))?.part).toBe(hashOf('a'));
    expect(parseBuildSearch(`${hashOf('a')}-x.drv/`)?.part).toBe(`${hashOf('a')}-x.drv`);
    expect(parseBuildSearch(`${'e'.repeat(32)}`)?.text).toBe('e'.repeat(32)); // e is not in Nix's base 32
    expect(parseBuildSearch('nixpkgs:trunk:hello')?.text).toBe('nixpkgs:trunk:hello');
    expect(parseBuildSearch('   ')).toBeNull();
  });
});
