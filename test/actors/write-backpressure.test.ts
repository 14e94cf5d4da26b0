import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { ResultWriter, type AttemptRow, type WriteGate } from '../../src/actors/result-writer.ts';
import { PgSchedulerDb } from '../../src/db/scheduler-db.ts';
import { createLogger } from '../../src/util/logger.ts';
import { useTestDatabase } from '../helpers/db.ts';
import { useJobset } from '../helpers/hydra-rows.ts';

/** A write gate the test opens and closes: closed, the database takes nothing (results outrun it). */
class Gate implements WriteGate {
  private waiting: (() => void)[] = [];
  open = false;
  whenOpen(): Promise<void> {
    return this.open ? Promise.resolve() : new Promise((r) => this.waiting.push(r));
  }
  set(open: boolean): void {
    this.open = open;
    if (!open) return;
    const w = this.waiting;
    this.waiting = [];
    for (const r of w) r();
  }
}

/**
 * Result writes against a real PostgreSQL that is slower than the results:
 * a simulated dispatcher assigns steps (each start row a write) whose
 * results arrive at once (each a write that waits for its start row),
 * while the gate keeps the database from taking any. Dispatch must pause at
 * the high mark of pending writes, counted from the assignment, resume at
 * three quarters of it, and every row must land in the end.
 */
describe('result-write backpressure', () => {
  const db = useTestDatabase();
  const jobset = useJobset(db);
  /** Queues one build per .drv path (jobs named `<prefix><n>`), in order; their ids. */
  const queueAll = async (prefix: string, drvs: readonly string[]): Promise<number[]> =>
    (
      await db.pool.query<{ id: number }>(
        `insert into builds (finished, timestamp, jobset_id, job, drvpath, system)
         select 0, 0, $1, $2 || ord, d, 'x86_64-linux' from unnest($3::text[]) with ordinality as t(d, ord) order by ord returning id`,
        [jobset.id, prefix, drvs],
      )
    ).rows.map((r) => r.id);
  const log = createLogger({ level: 'silent' });

  it('holds dispatch at the high mark, resumes at 3/4, loses nothing', async () => {
    let run = 0;
    await fc.assert(
      fc.asyncProperty(fc.integer({ min: 2, max: 12 }), fc.integer({ min: 1, max: 40 }), async (max, steps) => {
        run++;
        const drvs = Array.from({ length: steps }, (_, i) => `/nix/store/${String(run).padStart(4, '0')}${String(i).padStart(28, '0')}-bp.drv`);
        const ids = await queueAll('bp', drvs);

        const gate = new Gate();
        const events: { on: boolean; pending: number }[] = [];
        let released: (() => void) | null = null;
        const writer: ResultWriter<AttemptRow> = new ResultWriter<AttemptRow>({
          db: new PgSchedulerDb(db.pool),
          log,
          clock: { now: () => 0 },
          gate,
          maxPendingWrites: max,
          backpressure: (on) => {
            events.push({ on, pending: writer.pending });
            if (!on) released?.();
          },
          running: () => true,
        });

        for (let i = 0; i < steps; i++) {
          if (writer.backpressured) {
            // Dispatch is held: the database catches up (the gate opens) until it resumes.
            const resumed = new Promise<void>((r) => (released = r));
            gate.set(true);
            await resumed;
            gate.set(false);
          }
          const buildId = ids[i]!;
          const out = `/nix/store/${String(run).padStart(4, '0')}${String(i).padStart(28, '0')}-bp`;
          const row = writer.started({ buildId, drvPath: drvs[i]!, system: 'x86_64-linux', machine: 'm', startTime: 1, outputs: [{ name: 'out', path: out }], firstStepOfBuild: true });
          expect(writer.pending).toBeLessThanOrEqual(max + 1);
          // The builder is faster than the database: the result is in before the start row is written.
          writer.track(
            writer.closing(buildId, row, (stepnr) =>
              new PgSchedulerDb(db.pool).stepSucceeded({
                buildId, stepnr, drvPath: drvs[i]!, system: 'x86_64-linux', machine: 'm', startTime: 1, stopTime: 2, overheadMs: 0, logFile: '',
                outputs: [{ name: 'out', path: out, narSize: 1, closureSize: 1 }], failedWithOutput: false, releaseName: null, products: [], metrics: [],
                builds: [{ id: buildId, isCachedBuild: false }],
              }),
            ),
          );
          expect(writer.pending).toBeLessThanOrEqual(max + 1);
        }
        gate.set(true);
        await writer.settle();

        // Holds and releases alternate; each hold at the mark, each release once down to three quarters of it.
        expect(events.length % 2).toBe(0);
        events.forEach((e, k) => {
          expect(e.on).toBe(k % 2 === 0);
          // A batch of start rows lands at once, so a release may find fewer than 3/4 left.
          if (e.on) expect(e.pending).toBe(max);
          else expect(e.pending).toBeLessThanOrEqual(Math.floor((max * 3) / 4));
        });
        // 2 writes per step (start, result): the mark is reached once there are enough of them.
        if (2 * steps >= max) expect(events.length).toBeGreaterThan(0);
        expect(writer.pending).toBe(0);
        expect(writer.backpressured).toBe(false);
        expect(writer.pressure.maxPending).toBeLessThanOrEqual(max + 1);
        expect(writer.pressure.holds).toBe(events.length / 2);

        // Nothing lost: every step has its one succeeded row, every build finished.
        const rows = await db.pool.query<{ n: number; ok: number; finished: number }>(
          `select count(*)::int n, count(*) filter (where s.status = 0 and s.busy = 0)::int ok,
                  count(distinct b.id) filter (where b.finished = 1 and b.buildstatus = 0)::int finished
             from buildsteps s join builds b on b.id = s.build where b.id = any($1)`,
          [ids],
        );
        expect(rows.rows[0]).toEqual({ n: steps, ok: steps, finished: steps });
      }),
      { numRuns: 12 },
    );
  });

  it('successes that arrive together share transactions; a bad one fails alone', async () => {
    const n = 60;
    const drvs = Array.from({ length: n }, (_, i) => `/nix/store/${'9'.repeat(4)}${String(i).padStart(28, '0')}-tx.drv`);
    const ids = await queueAll('tx', drvs);
    // The real database, its transactions of successes counted.
    const pgDb = new PgSchedulerDb(db.pool);
    let transactions = 0;
    const real = pgDb.stepsSucceeded.bind(pgDb);
    pgDb.stepsSucceeded = (list) => {
      transactions++;
      return real(list);
    };
    const writer = new ResultWriter<AttemptRow>({ db: pgDb, log, clock: { now: () => 0 }, backpressure: () => {}, running: () => true });
    const success = (buildId: number, i: number) => ({
      buildId, stepnr: null, drvPath: drvs[i] ?? '/nix/store/00000000000000000000000000000000-bad.drv', system: 'x86_64-linux', machine: 'm', startTime: 1, stopTime: 2, overheadMs: 0, logFile: '',
      outputs: [{ name: 'out', path: `/nix/store/${'9'.repeat(4)}${String(i).padStart(28, '0')}-tx`, narSize: 1, closureSize: 1 }],
      failedWithOutput: false, releaseName: null, products: [], metrics: [], builds: buildId > 0 ? [{ id: buildId, isCachedBuild: false }] : [],
    });
    // 40 good results at once: four go at once, the other 36 wait for them and share the next transaction.
    const good = 40;
    const first = await Promise.all(ids.slice(0, good).map((id, i) => writer.succeeded(success(id, i))));
    expect(first).toEqual(ids.slice(0, good).map((id) => [id]));
    expect(transactions).toBe(5);
    // The rest with one bad result among them (a build that does not exist: its step row violates the foreign key).
    const results = await Promise.allSettled([...ids.slice(good).map((id, i) => writer.succeeded(success(id, good + i))), writer.succeeded(success(-1, n))]);
    expect(results.slice(0, n - good).map((r) => (r.status === 'fulfilled' ? r.value : r.reason))).toEqual(ids.slice(good).map((id) => [id]));
    expect(results[n - good]!.status).toBe('rejected');
    const rows = await db.pool.query<{ n: number }>('select count(*)::int n from builds where id = any($1) and finished = 1 and buildstatus = 0', [ids]);
    expect(rows.rows[0]!.n).toBe(n);
  });
});
