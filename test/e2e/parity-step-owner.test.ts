import { randomBytes } from 'node:crypto';
import { chmodSync, mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { LocalNixBuilder } from '../../src/builder/local-builder.ts';
import { LocalNixStore } from '../../src/nix/local-store.ts';
import type { RunnerRuntime } from '../../src/daemon/runner-runtime.ts';
import { createTestDatabase, type TestDatabase } from '../helpers/db.ts';
import { createJobset } from '../helpers/hydra-rows.ts';
import { instantiate, MK_DRV } from '../helpers/nix.ts';
import { machineRecord, startRuntime, waitFor } from '../helpers/runtime.ts';

/**
 * Issue 16 point 2: which build a step's BuildSteps row goes under. Hydra's
 * runners record a step under the build whose top-level derivation it is when
 * one needs it, else under any build that needs it (Rust runner
 * subprojects/hydra-queue-runner/src/state/mod.rs:842-845
 * `dependents.find(|b| b.drv_path == drv).or_else(|| dependents.iter().next())`;
 * C++ at cf9f38e4 builder.cc:128). On success every build whose derivation it
 * is ends with `isCachedBuild = (job.build_id != b.id)` (Rust state/mod.rs:2100;
 * C++ builder.cc markSucceededBuild(…, buildId != build->id …)), and the row's
 * build gets `build_started` (Rust state/mod.rs:1127). Real PostgreSQL with
 * Hydra's schema, real Nix builds in the runner's store.
 */
describe('the build a step row goes under', () => {
  let db: TestDatabase;
  let jobset: number;
  const store = new LocalNixStore();
  const dir = mkdtempSync(join(tmpdir(), 'hydrant-owner-'));
  // Builds run as a build user: the gate files must be visible to it.
  chmodSync(dir, 0o755);
  beforeAll(async () => {
    db = await createTestDatabase();
    jobset = await createJobset(db.pool, 'owner', 'main');
  });
  afterAll(() => db.drop());

  async function queue(drvPath: string, job: string): Promise<number> {
    const d = await store.readDerivation(drvPath);
    const { rows } = await db.pool.query<{ id: number }>(
      `insert into builds (finished, timestamp, jobset_id, job, drvpath, system) values (0, extract(epoch from now())::int, $1, $2, $3, $4) returning id`,
      [jobset, job, drvPath, d.system],
    );
    for (const o of d.outputs) await db.pool.query('insert into buildoutputs (build, name, path) values ($1, $2, $3)', [rows[0]!.id, o.name, o.path]);
    return rows[0]!.id;
  }
  const unfinished = async () => (await db.pool.query<{ n: number }>('select count(*)::int n from builds where finished = 0')).rows[0]!.n;
  const build = async (id: number) => (await db.pool.query('select buildstatus, iscachedbuild, starttime, stoptime from builds where id = $1', [id])).rows[0];
  const steps = async (id: number) =>
    (await db.pool.query('select drvpath, status, busy, machine, propagatedfrom, starttime, stoptime from buildsteps where build = $1 order by stepnr', [id])).rows;

  /** A dependency `dep` (waiting for `gate` when given) and `top` that needs it. */
  async function pair(gate?: string): Promise<{ dep: string; top: string }> {
    const n = randomBytes(4).toString('hex');
    const wait = gate ? `while [ ! -e ${gate} ]; do /bin/sleep 0.1; done; ` : '';
    const [dep, top] = await instantiate(
      `let ${MK_DRV} dep = mk { name = "dep-${n}"; script = "${wait}echo dep > $out"; }; in
       { inherit dep; top = mk { name = "top-${n}"; script = "/bin/cat \${dep} > $out"; }; }`,
      ['dep', 'top'],
    );
    return { dep: dep!, top: top! };
  }

  /**
   * For buildWithBothLoaded's runtime: its steps wait for the machine (an hour before "unsupported", whereas
   * TEST_CONFIG's 0.1 s ran out during a slow load and failed them with status 9).
   */
  const NO_MACHINE_YET = { maxUnsupportedTimeInS: 3600 };

  /**
   * Waits until builds x and y are both in the graph, and only then adds a machine (else the first
   * loaded would simply be the only one to take dep); returns once every build has ended.
   */
  async function buildWithBothLoaded(runtime: RunnerRuntime, x: number, y: number): Promise<void> {
    await runtime.initialLoad;
    await waitFor(() => runtime.scheduler.graph.builds.has(x) && runtime.scheduler.graph.builds.has(y), 30_000, 'both builds to load');
    runtime.scheduler.addMachine(machineRecord('local', { maxJobs: 2 }), new LocalNixBuilder({ hydraDataDir: dir }));
    await waitFor(async () => (await unfinished()) === 0, 60_000, 'builds to finish');
    await runtime.scheduler.settle();
  }

  /** A pair whose `dep` waits for the returned `gate` file, with the dependent build of `top` (x) queued first. */
  async function gatedPairQueued(): Promise<{ gate: string; dep: string; top: string; x: number }> {
    const gate = join(dir, `gate-${randomBytes(4).toString('hex')}`);
    const { dep, top } = await pair(gate);
    return { gate, dep, top, x: await queue(top, 'top') };
  }

  it('goes under the build whose top-level derivation the step is, not the lowest-id build needing it', async () => {
    const { dep, top } = await pair();
    // The dependent job has the lower id, as when an evaluation queues `top` before `dep`.
    const x = await queue(top, 'top');
    const y = await queue(dep, 'dep');
    const { runtime } = await startRuntime(db.pool, store, NO_MACHINE_YET);
    try {
      await buildWithBothLoaded(runtime, x, y);
      expect(await steps(y)).toEqual([{ drvpath: dep, status: 0, busy: 0, machine: 'local', propagatedfrom: null, starttime: expect.any(Number), stoptime: expect.any(Number) }]);
      expect((await steps(x)).map((s) => [s.drvpath, s.status])).toEqual([[top, 0]]);
      // Each build ran its own derivation: neither is cached (Rust state/mod.rs:2100).
      expect(await build(y)).toMatchObject({ buildstatus: 0, iscachedbuild: 0 });
      expect(await build(x)).toMatchObject({ buildstatus: 0, iscachedbuild: 0 });
    } finally {
      await runtime.stop(0);
    }
  }, 180_000);

  it('stays under the build it started under when the owning build is loaded while it runs', async () => {
    const { gate, dep, top, x } = await gatedPairQueued();
    const { runtime, listener } = await startRuntime(db.pool, store);
    try {
      runtime.scheduler.addMachine(machineRecord('local', { maxJobs: 2 }), new LocalNixBuilder({ hydraDataDir: dir }));
      await waitFor(async () => (await steps(x)).some((s) => s.drvpath === dep && s.busy !== 0), 30_000, 'dep to start under the dependent build');
      const y = await queue(dep, 'dep');
      listener.emit('notification', { channel: 'builds_added', payload: '' });
      await waitFor(() => runtime.scheduler.graph.builds.has(y), 30_000, 'the owning build to load');
      writeFileSync(gate, '');
      await waitFor(async () => (await unfinished()) === 0, 60_000, 'builds to finish');
      await runtime.scheduler.settle();
      // The row was created under x when dep was dispatched (Rust state/mod.rs:1096-1118); y, loaded later,
      // takes the result as a cached build with the step's times (Rust state/mod.rs:2100 is_cached = job.build_id != b.id;
      // mark_succeeded_build(…, start_time, stop_time)).
      const [ran] = await steps(x);
      expect(ran).toMatchObject({ drvpath: dep, status: 0, propagatedfrom: null });
      expect(await steps(y)).toEqual([]);
      expect(await build(y)).toEqual({ buildstatus: 0, iscachedbuild: 1, starttime: ran.starttime, stoptime: ran.stoptime });
      expect(await build(x)).toMatchObject({ buildstatus: 0, iscachedbuild: 0 });
    } finally {
      await runtime.stop(0);
    }
  }, 180_000);

  it('moves to the owning build when the runner restarts after it was queued', async () => {
    const { gate, dep, top, x } = await gatedPairQueued();
    const first = await startRuntime(db.pool, store);
    try {
      first.runtime.scheduler.addMachine(machineRecord('local', { maxJobs: 2 }), new LocalNixBuilder({ hydraDataDir: dir }));
      await waitFor(async () => (await steps(x)).some((s) => s.drvpath === dep && s.busy !== 0), 30_000, 'dep to start under the dependent build');
    } finally {
      await first.runtime.stop(0);
    }
    // Queued while no runner runs; the next runner loads both and dispatches dep afresh.
    const y = await queue(dep, 'dep');
    writeFileSync(gate, '');
    const { runtime } = await startRuntime(db.pool, store, NO_MACHINE_YET);
    try {
      await buildWithBothLoaded(runtime, x, y);
      // The first attempt's row stays under x, aborted (3) and not busy (Rust state/mod.rs:611 abort_orphaned_build_step;
      // C++ hydra-queue-runner.cc clearBusy); the attempt that built dep is under y.
      expect((await steps(x)).map((s) => [s.drvpath, s.status, s.busy])).toEqual([[dep, 3, 0], [top, 0, 0]]);
      expect(await steps(y)).toEqual([{ drvpath: dep, status: 0, busy: 0, machine: 'local', propagatedfrom: null, starttime: expect.any(Number), stoptime: expect.any(Number) }]);
      expect(await build(y)).toMatchObject({ buildstatus: 0, iscachedbuild: 0 });
      expect(await build(x)).toMatchObject({ buildstatus: 0, iscachedbuild: 0 });
    } finally {
      await runtime.stop(0);
    }
  }, 180_000);
});
