/**
 * Step starts written as one statement (steps-started.sql, step-started.sql
 * for a start alone) leave the same
 * rows, return the same stepnrs and send the same NOTIFYs, in the same
 * order, as the transaction that locks and inserts start by start; and two
 * writers numbering steps of one build still never collide.
 */
import fc from 'fast-check';
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { NotificationListener, type Notification } from '../../src/db/listener.ts';
import { createPool, withTransaction } from '../../src/db/pool.ts';
import { startedInOneStatement, startedInTransaction } from '../../src/db/scheduler-db.ts';
import { recordStep, startStep } from '../../src/db/step-rows.ts';
import { useTestDatabase } from '../helpers/db.ts';
import { createJobset, queueBuild } from '../helpers/hydra-rows.ts';

describe('step starts in one statement', () => {
  const db = useTestDatabase();
  let listener: NotificationListener;
  const seen: Notification[] = [];
  let jobsetId: number;
  let n = 0;
  const EXISTING = `/nix/store/${'e'.repeat(32)}-existing.drv`;
  const drv = () => `/nix/store/${String(++n).padStart(32, '0')}-x.drv`;
  beforeAll(async () => {
    jobsetId = await createJobset(db.pool);
    listener = new NotificationListener({ url: db.url, channels: ['step_started', 'build_started'], minBackoffMs: 20, maxBackoffMs: 200 });
    listener.on('notification', (x: Notification) => seen.push(x));
    await listener.start();
  });
  afterAll(async () => {
    await listener.stop();
  });

  async function notesAfter(before: number, expected: number): Promise<Notification[]> {
    const deadline = Date.now() + 5000;
    while (seen.length < before + expected && Date.now() < deadline) await new Promise((r) => setTimeout(r, 10));
    // Anything more would arrive with the expected ones (one commit): a short wait shows none did.
    await new Promise((r) => setTimeout(r, 30));
    return seen.slice(before);
  }

  interface Scenario {
    /** Per build: how many steps it has already. */
    builds: number[];
    /** Per start: which build (index), its outputs (path known or not), whether it is its build's first step. */
    starts: { build: number; outputs: boolean[]; first: boolean; system: string | null }[];
  }

  /** Writes the scenario's starts one way; returns stepnrs, rows and NOTIFYs with build ids as indexes. */
  async function run(s: Scenario, viaTransaction: boolean): Promise<unknown> {
    const ids: number[] = [];
    for (const existing of s.builds) {
      const d = drv();
      const id = await queueBuild(db.pool, jobsetId, d, 'job', 'x86_64-linux', [{ name: 'out', path: null }]);
      for (let k = 0; k < existing; k++) await withTransaction(db.pool, (c) => recordStep(c, { buildId: id, drvPath: EXISTING, status: 8 }));
      ids.push(id);
    }
    const starts = s.starts.map((t, i) => ({
      buildId: ids[t.build]!,
      drvPath: `/nix/store/${String(i).padStart(32, 'a')}-s${i}.drv`,
      system: t.system ?? 'x86_64-linux',
      machine: `ssh://m${i}`,
      startTime: 100 + i,
      outputs: t.outputs.map((known, k) => ({ name: ['out', 'dev', 'doc'][k]!, path: known ? `/nix/store/${String(k).repeat(32)}-o${i}` : null })),
      firstStepOfBuild: t.first,
    }));
    const before = seen.length;
    const stepnrs = await (viaTransaction ? startedInTransaction : startedInOneStatement)(db.pool, starts);
    const expected = starts.length + new Set(starts.filter((a) => a.firstStepOfBuild).map((a) => a.buildId)).size;
    const ix = (id: number) => ids.indexOf(id);
    const notes = (await notesAfter(before, expected)).map((x) => ({ channel: x.channel, payload: x.payload.split('\t').map((f, i) => (i === 0 ? ix(Number(f)) : f)) }));
    const steps = (await db.pool.query('select * from buildsteps where build = any($1) order by build, stepnr', [ids])).rows.map((r) => ({ ...r, build: ix(r.build) }));
    const stepOutputs = (await db.pool.query('select build, stepnr, name, path from buildstepoutputs where build = any($1) order by build, stepnr, name', [ids])).rows.map((r) => ({ ...r, build: ix(r.build) }));
    return { stepnrs, notes, steps, stepOutputs };
  }

  it('property: the same stepnrs, rows and NOTIFYs as the transaction', async () => {
    const scenario = fc.integer({ min: 1, max: 3 }).chain((nb) =>
      fc.record({
        builds: fc.array(fc.integer({ min: 0, max: 2 }), { minLength: nb, maxLength: nb }),
        starts: fc.array(
          fc.record({ build: fc.integer({ min: 0, max: nb - 1 }), outputs: fc.array(fc.boolean(), { maxLength: 3 }), first: fc.boolean(), system: fc.constantFrom(null, 'aarch64-linux') }),
          { minLength: 1, maxLength: 5 },
        ),
      }),
    );
    let sawShared = 0;
    let sawAlone = 0;
    await fc.assert(
      fc.asyncProperty(scenario, async (s) => {
        const alone = await run(s, false);
        const inTransaction = await run(s, true);
        expect(alone).toEqual(inTransaction);
        if (new Set(s.starts.map((t) => t.build)).size < s.starts.length) sawShared++;
        if (s.starts.length === 1) sawAlone++;
      }),
      {
        numRuns: 25,
        // Starts given out of build order, two of one build, one build with steps already.
        examples: [[{ builds: [2], starts: [{ build: 0, outputs: [true, false], first: true, system: null }] }], [{ builds: [1, 0], starts: [{ build: 1, outputs: [true, false], first: true, system: null }, { build: 0, outputs: [], first: false, system: null }, { build: 1, outputs: [false], first: false, system: 'aarch64-linux' }] }]],
      },
    );
    // The comparison covered several starts of one build in one write, and a start alone (step-started.sql).
    expect(sawShared).toBeGreaterThan(0);
    expect(sawAlone).toBeGreaterThan(0);
  });

  it('a missing build writes nothing, not even the starts of the other builds', async () => {
    const d = drv();
    const id = await queueBuild(db.pool, jobsetId, d, 'job', 'x86_64-linux', [{ name: 'out', path: null }]);
    const start = { drvPath: d, system: 'x86_64-linux', machine: 'm', startTime: 1, outputs: [{ name: 'out', path: null }], firstStepOfBuild: true };
    const before = seen.length;
    await expect(startedInOneStatement(db.pool, [{ ...start, buildId: id }, { ...start, buildId: 999_999 }])).rejects.toThrow('build 999999 does not exist');
    await expect(startedInOneStatement(db.pool, [{ ...start, buildId: 999_998 }])).rejects.toThrow('build 999998 does not exist');
    expect((await db.pool.query('select count(*)::int n from buildsteps where build = $1', [id])).rows[0].n).toBe(0);
    expect((await db.pool.query('select count(*)::int n from buildstepoutputs where build = $1', [id])).rows[0].n).toBe(0);
    expect(await notesAfter(before, 0)).toEqual([]);
  });

  it.each([1, 2])('%i start(s) wait for a build locked by another writer and number after the step it committed meanwhile', async (count) => {
    const d = drv();
    const id = await queueBuild(db.pool, jobsetId, d, 'job', 'x86_64-linux', [{ name: 'out', path: null }]);
    const other = new pg.Client({ connectionString: db.url });
    await other.connect();
    try {
      await other.query('begin');
      const a = await startStep(other, { buildId: id, drvPath: d, system: null, machine: 'other', startTime: 1, busy: 1, type: 0, outputs: [] });
      const b = startedInOneStatement(db.pool, Array.from({ length: count }, () => ({ buildId: id, drvPath: d, system: 'x86_64-linux', machine: 'pool', startTime: 2, outputs: [], firstStepOfBuild: false })));
      // The statement has taken its snapshot and waits for the row lock: max(stepnr) cannot see `a`.
      for (;;) {
        const w = await db.pool.query("select count(*)::int n from pg_stat_activity where wait_event_type = 'Lock' and (query like '-- Step attempts begin%' or query like '-- One step attempt begins%')");
        if (w.rows[0].n > 0) break;
        await new Promise((r) => setTimeout(r, 10));
      }
      await other.query('commit');
      expect([a, await b]).toEqual([1, count === 1 ? [2] : [2, 3]]);
    } finally {
      await other.end();
    }
    expect((await db.pool.query('select stepnr, machine from buildsteps where build = $1 order by stepnr', [id])).rows).toEqual([
      { stepnr: 1, machine: 'other' },
      ...Array.from({ length: count }, (_, k) => ({ stepnr: 2 + k, machine: 'pool' })),
    ]);
  });

  it('allocates distinct stepnrs 1..60 to 40 concurrent statements on one build, half of them starting two steps', async () => {
    const d = drv();
    const id = await queueBuild(db.pool, jobsetId, d, 'job', 'x86_64-linux', [{ name: 'out', path: null }]);
    const pool = createPool(db.url, { max: 40 });
    try {
      const nrs = await Promise.all(
        Array.from({ length: 40 }, (_, i) =>
          startedInOneStatement(
            pool,
            Array.from({ length: 1 + (i % 2) }, (_, k) => ({ buildId: id, drvPath: d, system: 'x86_64-linux', machine: `m${i}-${k}`, startTime: i, outputs: [{ name: 'out', path: null }], firstStepOfBuild: false })),
          ),
        ),
      );
      expect(nrs.flat().sort((x, y) => x - y)).toEqual(Array.from({ length: 60 }, (_, i) => i + 1));
    } finally {
      await pool.end();
    }
    const rows = (await db.pool.query('select stepnr, machine from buildsteps where build = $1 order by stepnr', [id])).rows;
    expect(rows.map((r) => r.stepnr)).toEqual(Array.from({ length: 60 }, (_, i) => i + 1));
    expect((await db.pool.query('select count(*)::int n from buildstepoutputs where build = $1', [id])).rows[0].n).toBe(60);
  });
});
