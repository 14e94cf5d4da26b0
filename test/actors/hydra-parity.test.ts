import { randomBytes } from 'node:crypto';
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { StepFinisher } from '../../src/actors/builder-port.ts';
import { LocalNixBuilder } from '../../src/builder/local-builder.ts';
import { LocalNixStore } from '../../src/nix/local-store.ts';
import { createTestDatabase, type TestDatabase } from '../helpers/db.ts';
import { createJobset } from '../helpers/hydra-rows.ts';
import { instantiate, MK_DRV } from '../helpers/nix.ts';
import { machineRecord, startRuntime, waitFor } from '../helpers/runtime.ts';

/**
 * The rows Hydra's queue runners write for failures, retries, cancellations,
 * cached failures and dependency timeouts, checked on real PostgreSQL with
 * Hydra's schema and real Nix builds (a local Nix builder). Each expectation
 * cites the Hydra code (Rust runner: subprojects/hydra-queue-runner/src;
 * C++ runner at cf9f38e4: src/hydra-queue-runner) that writes the same.
 */
describe("Hydra's rows for failures and limits", () => {
  let db: TestDatabase;
  let jobset: number;
  const store = new LocalNixStore();
  const dataDir = mkdtempSync(join(tmpdir(), 'hydrant-parity-'));
  beforeAll(async () => {
    db = await createTestDatabase();
    jobset = await createJobset(db.pool, 'parity', 'main');
  });
  afterAll(() => db.drop());

  /** Queues a build as Hydra's evaluator does, with its meta.maxSilent and meta.timeout. */
  /** Instantiates one trivial derivation `<job>-<random>` running `script` and queues it as `job`, with an hour's timeouts. */
  async function queueJob(job: string, script: string): Promise<number> {
    const n = randomBytes(4).toString('hex');
    const [drv] = await instantiate(`let ${MK_DRV} in { ${job} = mk { name = "${job}-${n}"; script = "${script}"; }; }`, [job]);
    return queue(drv!, job, { maxsilent: 3600, timeout: 3600 });
  }

  async function queue(drvPath: string, job: string, limits: { maxsilent: number; timeout: number }): Promise<number> {
    const d = await store.readDerivation(drvPath);
    const { rows } = await db.pool.query<{ id: number }>(
      `insert into builds (finished, timestamp, jobset_id, job, drvpath, system, maxsilent, timeout)
       values (0, extract(epoch from now())::int, $1, $2, $3, $4, $5, $6) returning id`,
      [jobset, job, drvPath, d.system, limits.maxsilent, limits.timeout],
    );
    for (const o of d.outputs) await db.pool.query('insert into buildoutputs (build, name, path) values ($1, $2, $3)', [rows[0]!.id, o.name, o.path]);
    return rows[0]!.id;
  }

  const unfinished = async () => (await db.pool.query<{ n: number }>('select count(*)::int n from builds where finished = 0')).rows[0]!.n;
  const build = async (id: number) =>
    (await db.pool.query('select buildstatus, iscachedbuild, starttime, stoptime from builds where id = $1', [id])).rows[0];
  const steps = async (id: number) =>
    (await db.pool.query(
      `select s.stepnr, s.drvpath, s.status, s.errormsg, s.machine, s.propagatedfrom, s.starttime, s.stoptime,
              coalesce((select json_agg(json_build_object('name', o.name, 'path', o.path) order by o.name)
                        from buildstepoutputs o where o.build = s.build and o.stepnr = s.stepnr), '[]') as outputs
       from buildsteps s where s.build = $1 order by s.stepnr`, [id])).rows;
  const outPath = async (drv: string) => (await store.readDerivation(drv)).outputs.find((o) => o.name === 'out')!.path;

  it('passes a failing step status to its dependents, floors dependency timeouts, and names the original failure of a cached one', async () => {
    const n = randomBytes(4).toString('hex');
    const attrs = ['usesSilent1', 'usesSilent2', 'usesSpam1', 'usesSpam2', 'usesBroken1', 'usesBroken2', 'usesTicking', 'tickingTop', 'usesBroken3', 'broken', 'ticking', 'silent'];
    const drvs = await instantiate(
      `let ${MK_DRV}
        silent = mk { name = "silent-${n}"; script = "/bin/sleep 60; echo > $out"; };
        spam = mk { name = "spam-${n}"; script = "i=0; while [ $i -lt 3000 ]; do echo 0123456789012345678901234567890123456789; i=$((i+1)); done; echo > $out"; };
        broken = mk { name = "broken-${n}"; script = "echo going to fail; exit 1"; };
        ticking = mk { name = "ticking-${n}"; script = "for i in 1 2 3 4 5; do echo tick; /bin/sleep 1; done; echo > $out"; };
        tickingTop = mk { name = "ticking-top-${n}"; script = "for i in 1 2 3 4 5 6 7 8 9 10; do echo tick; /bin/sleep 1; done; echo > $out"; };
        uses = name: dep: mk { name = "\${name}-${n}"; script = "/bin/cat \${dep} > $out"; };
      in {
        inherit broken ticking silent tickingTop;
        usesSilent1 = uses "us1" silent; usesSilent2 = uses "us2" silent;
        usesSpam1 = uses "usp1" spam; usesSpam2 = uses "usp2" spam;
        usesBroken1 = uses "ub1" broken; usesBroken2 = uses "ub2" broken; usesBroken3 = uses "ub3" broken;
        usesTicking = uses "ut" ticking;
      }`,
      attrs,
    );
    const drv = Object.fromEntries(attrs.map((a, i) => [a, drvs[i]!]));
    const roomy = { maxsilent: 3600, timeout: 3600 };
    const id: Record<string, number> = {};
    // The dependents of `silent` allow 1 s of silence: floored at the runner's 2 s, still under its 60 s sleep.
    id.usesSilent1 = await queue(drv.usesSilent1!, 'usesSilent1', { maxsilent: 1, timeout: 3600 });
    id.usesSilent2 = await queue(drv.usesSilent2!, 'usesSilent2', { maxsilent: 1, timeout: 3600 });
    for (const a of ['usesSpam1', 'usesSpam2', 'usesBroken1', 'usesBroken2']) id[a] = await queue(drv[a]!, a, roomy);
    // meta.timeout = 2 s for a build whose dependency takes 5 s, and for a build whose own derivation takes 10 s.
    id.usesTicking = await queue(drv.usesTicking!, 'usesTicking', { maxsilent: 3600, timeout: 2 });
    id.tickingTop = await queue(drv.tickingTop!, 'tickingTop', { maxsilent: 3600, timeout: 2 });

    // No machine until every build is loaded (their steps wait, an hour before "unsupported"): a dependent
    // loaded after its dependency failed would be a cached failure (2, row 8), not a propagated row.
    const { runtime, listener } = await startRuntime(db.pool, store, { maxSilentTime: 2, buildTimeout: 3600, maxLogSize: 16 * 1024, maxUnsupportedTimeInS: 3600 });
    try {
      await runtime.initialLoad;
      expect(Object.values(id).filter((b) => !runtime.scheduler.graph.builds.has(b))).toEqual([]);
      runtime.scheduler.addMachine(machineRecord('local', { maxJobs: 4 }), new LocalNixBuilder({ hydraDataDir: dataDir }));
      await waitFor(async () => (await unfinished()) === 0, 180_000, 'builds to finish');
      await runtime.scheduler.settle();

      // 1. Dependents take the step's status; 2 only for a failed build (Rust state/mod.rs:2441-2449
      //    `if b.drv_path != step drv && step_status == Failed { DepFailed } else { step_status }`; C++ builder.cc:458).
      expect(await build(id.usesSilent1!)).toMatchObject({ buildstatus: 7, iscachedbuild: 0 });
      expect(await build(id.usesSilent2!)).toMatchObject({ buildstatus: 7 });
      expect(await build(id.usesSpam1!)).toMatchObject({ buildstatus: 10 });
      expect(await build(id.usesSpam2!)).toMatchObject({ buildstatus: 10 });
      expect(await build(id.usesBroken1!)).toMatchObject({ buildstatus: 2 });
      expect(await build(id.usesBroken2!)).toMatchObject({ buildstatus: 2 });

      // The step ran under the lowest build that needs it; the other gets a propagated row with the
      // step's status, error text, machine, propagatedFrom and BuildStepOutputs (Rust state/mod.rs:2406-2428
      // `create_build_step(..., status, error_msg, Some(job.build_id), step output paths)`; C++ builder.cc:440-452).
      const silentOut = await outPath(drvs[attrs.indexOf('silent')]!);
      const [ran] = await steps(id.usesSilent1!);
      expect(ran).toMatchObject({ drvpath: drvs[attrs.indexOf('silent')], status: 7, machine: 'local', propagatedfrom: null, outputs: [{ name: 'out', path: silentOut }] });
      expect(await steps(id.usesSilent2!)).toEqual([
        { stepnr: 1, drvpath: ran.drvpath, status: 7, errormsg: ran.errormsg, machine: 'local', propagatedfrom: id.usesSilent1, starttime: null, stoptime: null, outputs: [{ name: 'out', path: silentOut }] },
      ]);
      expect((await steps(id.usesSpam2!))[0]).toMatchObject({ status: 10, propagatedfrom: id.usesSpam1 });
      expect((await steps(id.usesBroken2!))[0]).toMatchObject({ status: 1, propagatedfrom: id.usesBroken1, outputs: [{ name: 'out', path: await outPath(drv.broken!) }] });

      // 7. A step that is only a dependency gets at least the default timeout (Rust state/mod.rs:866-873,
      //    `if !dependents.any(drv_path == drv) { build_timeout = build_timeout.max(default_build_timeout) }`):
      //    `ticking` (5 s) is built although its only dependent's meta.timeout is 2 s; a build's own
      //    derivation keeps its meta.timeout (state/mod.rs:853-863) and times out.
      expect(await build(id.usesTicking!)).toMatchObject({ buildstatus: 0 });
      expect((await steps(id.usesTicking!)).map((s) => [s.drvpath, s.status])).toEqual([[drv.ticking, 0], [drv.usesTicking, 0]]);
      expect(await build(id.tickingTop!)).toMatchObject({ buildstatus: 7 });

      // 6. A build that needs the failed derivation later is a cached failure: its step row (8, no
      //    machine, no times) names the build under which the derivation failed and has its outputs
      //    (Rust state/mod.rs handle_previous_failure: get_last_build_step_id, create_build_step(...,
      //    CachedFailure, None, Some(propagated_from), outputs); C++ queue-monitor.cc:187-216).
      id.usesBroken3 = await queue(drv.usesBroken3!, 'usesBroken3', roomy);
      id.brokenAgain = await queue(drv.broken!, 'broken', roomy);
      listener.emit('reconnected');
      await waitFor(async () => (await unfinished()) === 0, 60_000, 'cached failures to end');
      await runtime.scheduler.settle();
      // C++ queue-monitor.cc:212-213: dependency failed, or failed for its own derivation; isCachedBuild = 1.
      expect(await build(id.usesBroken3!)).toMatchObject({ buildstatus: 2, iscachedbuild: 1 });
      expect(await build(id.brokenAgain!)).toMatchObject({ buildstatus: 1, iscachedbuild: 1 });
      for (const b of [id.usesBroken3!, id.brokenAgain!]) {
        expect(await steps(b)).toEqual([
          { stepnr: 1, drvpath: drv.broken, status: 8, errormsg: null, machine: '', propagatedfrom: id.usesBroken1, starttime: null, stoptime: null, outputs: [{ name: 'out', path: await outPath(drv.broken!) }] },
        ]);
      }
    } finally {
      await runtime.stop(0);
    }
  }, 240_000);

  it('makes maxRetries attempts in all, each aborted row keeping its start time', async () => {
    const id = await queueJob('flaky', 'echo > $out');
    // The build succeeds, then every upload of its outputs fails: a retryable failure
    // (Rust build.rs:238-245, UploadFailure => can_retry, Aborted).
    const uploadFails: StepFinisher = { finish: async () => ({ kind: 'transient', errorMsg: 'upload failed', machineFault: false }) };
    const { runtime } = await startRuntime(db.pool, store, { maxRetries: 3, retryInterval: 0.01, retryBackoff: 1 }, uploadFails);
    try {
      runtime.scheduler.addMachine(machineRecord('local', { maxJobs: 1 }), new LocalNixBuilder({ hydraDataDir: dataDir }));
      await waitFor(async () => (await build(id))?.buildstatus !== null, 60_000, 'the build to end');
      await runtime.scheduler.settle();
      // 3. Rust state/mod.rs:2250-2252: tries += 1; retry while tries < max_retries, so 3 attempts in all
      //    (C++ builder.cc:264, `tries + 1 < maxTries`). Each attempt's row is aborted (3); the last one
      //    fails the build with 3 (state/mod.rs inner_fail_job with step_status Aborted).
      const rows = await steps(id);
      expect(rows.map((s) => [s.stepnr, s.status])).toEqual([[1, 3], [2, 3], [3, 3]]);
      expect(await build(id)).toMatchObject({ buildstatus: 3 });
      // 4. Each row keeps the attempt's real start time (Rust: job.result.set_start_time_now() at dispatch,
      //    state/mod.rs:879; finish_build_step writes it), never later than its stop time.
      for (const s of rows) {
        expect(s.starttime).toBeGreaterThan(0);
        expect(s.stoptime).toBeGreaterThanOrEqual(s.starttime);
      }
    } finally {
      await runtime.stop(0);
    }
  });

  it('cancels a running step as Hydra does: status 4, its start time kept, no error text', async () => {
    const id = await queueJob('long', '/bin/sleep 120; echo > $out');
    const { runtime, listener } = await startRuntime(db.pool, store);
    try {
      runtime.scheduler.addMachine(machineRecord('local', { maxJobs: 1 }), new LocalNixBuilder({ hydraDataDir: dataDir }));
      await waitFor(async () => (await steps(id)).some((s) => s.starttime !== null), 30_000, 'the step to start');
      const [started] = await steps(id);
      // Let the attempt run into a later second than it started, so a row restamped at the stop would show.
      await waitFor(() => Date.now() / 1000 >= started.starttime + 2, 5_000, 'a later second');
      // Hydra's web UI cancels a queued build (Helper/AddBuilds cancelBuilds: finished = 1, buildstatus = 4, start = stop = now; NOTIFY builds_cancelled).
      await db.pool.query('update builds set finished = 1, buildstatus = 4, starttime = extract(epoch from now())::int, stoptime = extract(epoch from now())::int where id = $1', [id]);
      listener.emit('notification', { channel: 'builds_cancelled', payload: String(id) });
      await waitFor(async () => (await steps(id))[0]?.status !== null, 30_000, 'the step row to end');
      await runtime.scheduler.settle();
      // 4. Rust state/mod.rs:1347-1355: fail_step(Cancelled, error_msg None) -> status 4
      //    (build.rs:268-271), the row's start time the attempt's own.
      expect(await steps(id)).toEqual([{ ...started, status: 4, errormsg: null, stoptime: expect.any(Number) }]);
    } finally {
      await runtime.stop(0);
    }
  });
});
