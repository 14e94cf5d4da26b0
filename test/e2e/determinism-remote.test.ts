import { randomBytes } from 'node:crypto';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type pg from 'pg';
import { runCli } from '../helpers/cli.ts';
import { useTestDatabase } from '../helpers/db.ts';
import { InProcessRunner } from '../helpers/in-process-runner.ts';
import { MK_DRV } from '../helpers/nix.ts';
import { waitFor } from '../helpers/runtime.ts';
import { startSshdServe, type SshdServe } from '../helpers/sshd-serve.ts';

/**
 * Determinism checks (src/actors/determinism.ts; Hydra's C++ runner at
 * cf9f38e4: isDetermistic = "1" builds once more and enforces,
 * queue-monitor.cc:463 and builder.cc:102; `xxx-jobset-repeats` builds N more
 * times, builder.cc:133-138) on machines in other processes: `hydrant
 * builder` over gRPC, each with its own store, and an SSH machine
 * (`nix-store --serve --write` behind OpenSSH's sshd, its own /nix). The
 * rows are those Hydra writes: BuildSteps.timesBuilt and isNonDeterministic
 * (hydra-queue-runner.cc:350-357), status 12 for an enforced difference
 * (build-remote.cc:407-410), its outputs in FailedPaths (canCache), and 12
 * propagated to a dependent (builder.cc:458). test/e2e/parity-determinism.test.ts
 * covers the in-process local builder.
 */

/** Jobs of the jobset "checked" (no repeats asked: only isDetermistic = "1" checks) and of "repeated" (det:repeated:1). */
function release(n: string): { checked: string; repeated: string } {
  const random = 'read x < /proc/sys/kernel/random/uuid; echo $x > $out';
  const head = `{ }: let ${MK_DRV} randomChecked = mk { name = "rr-random-checked-${n}"; script = "${random}"; extra = { isDetermistic = "1"; }; }; in`;
  return {
    checked: `${head} {
      inherit randomChecked;
      usesRandomChecked = mk { name = "rr-uses-random-checked-${n}"; script = "/bin/cat \${randomChecked} > $out"; };
      sameChecked = mk { name = "rr-same-checked-${n}"; script = "echo same-${n} > $out"; extra = { isDetermistic = "1"; }; };
      plain = mk { name = "rr-plain-${n}"; script = "${random}"; };
    }`,
    repeated: `${head} {
      randomInRepeated = mk { name = "rr-random-repeated-${n}"; script = "${random}"; };
      sameInRepeated = mk { name = "rr-same-repeated-${n}"; script = "echo same-${n} > $out"; };
    }`,
  };
}

/** Submits both jobsets of `release(n)` under project `project`, waits for every build, and checks the rows. */
async function submitAndCheck(db: { url: string; pool: pg.Pool }, dir: string, project: string, machine: string): Promise<void> {
  const n = randomBytes(4).toString('hex');
  const files = release(n);
  for (const jobset of ['checked', 'repeated'] as const) {
    const file = join(dir, `${project}-${jobset}.nix`);
    writeFileSync(file, files[jobset]);
    expect((await runCli(['submit', '--db-url', db.url, '--project', project, '--jobset', jobset, '--create', '--file', file])).code).toBe(0);
  }
  const unfinished = async () =>
    (await db.pool.query('select count(*)::int n from builds b join jobsets j on j.id = b.jobset_id where j.project = $1 and b.finished = 0', [project])).rows[0].n as number;
  await waitFor(async () => (await unfinished()) === 0, 150_000, 'the builds to finish');
  const build = async (job: string) =>
    (await db.pool.query('select b.id, b.buildstatus, b.drvpath from builds b join jobsets j on j.id = b.jobset_id where j.project = $1 and b.job = $2', [project, job])).rows[0] as {
      id: number;
      buildstatus: number;
      drvpath: string;
    };
  const steps = async (job: string) =>
    (
      await db.pool.query(
        `select s.status, s.timesbuilt, s.isnondeterministic, s.propagatedfrom, s.machine from buildsteps s join builds b on b.id = s.build
         join jobsets j on j.id = b.jobset_id where j.project = $1 and b.job = $2 order by s.stepnr`,
        [project, job],
      )
    ).rows;

  // isDetermistic = "1" and random: built twice, differed, enforced -> 12 with both rounds recorded; its outputs are a cached failure.
  const randomChecked = await build('randomChecked');
  expect(randomChecked.buildstatus).toBe(12);
  expect(await steps('randomChecked')).toEqual([{ status: 12, timesbuilt: 2, isnondeterministic: true, propagatedfrom: null, machine }]);
  const out = (await db.pool.query("select path from buildoutputs where build = $1 and name = 'out'", [randomChecked.id])).rows[0].path as string;
  expect((await db.pool.query('select count(*)::int n from failedpaths where path = $1', [out])).rows[0].n).toBe(1);
  // Its dependent fails with 12 too, propagated from the build it failed under, naming the machine (C++ builder.cc failStep).
  expect((await build('usesRandomChecked')).buildstatus).toBe(12);
  expect(await steps('usesRandomChecked')).toEqual([{ status: 12, timesbuilt: null, isnondeterministic: null, propagatedfrom: randomChecked.id, machine }]);
  // isDetermistic = "1" and deterministic: passes after two rounds.
  expect((await build('sameChecked')).buildstatus).toBe(0);
  expect(await steps('sameChecked')).toEqual([{ status: 0, timesbuilt: 2, isnondeterministic: false, propagatedfrom: null, machine }]);
  // No check: built once, isNonDeterministic not written.
  expect((await build('plain')).buildstatus).toBe(0);
  expect(await steps('plain')).toEqual([{ status: 0, timesbuilt: 1, isnondeterministic: null, propagatedfrom: null, machine }]);
  // jobsetRepeats det:repeated:1, not enforced: a random output succeeds flagged non-deterministic, a fixed one passes.
  expect((await build('randomInRepeated')).buildstatus).toBe(0);
  expect(await steps('randomInRepeated')).toEqual([{ status: 0, timesbuilt: 2, isnondeterministic: true, propagatedfrom: null, machine }]);
  expect((await build('sameInRepeated')).buildstatus).toBe(0);
  expect(await steps('sameInRepeated')).toEqual([{ status: 0, timesbuilt: 2, isnondeterministic: false, propagatedfrom: null, machine }]);
}

describe('determinism checks on remote machines', () => {
  const db = useTestDatabase();
  const dir = mkdtempSync(join(tmpdir(), 'hydrant-determinism-remote-'));
  let sshd: SshdServe | undefined;
  let runner: InProcessRunner | undefined;
  beforeAll(async () => {
    sshd = await startSshdServe();
  });
  afterAll(async () => {
    await runner?.stop();
    await sshd?.stop();
  });

  it('over gRPC: `hydrant builder` processes run the rounds and report them', async () => {
    runner = await InProcessRunner.start(db.url, dir, { jobsetRepeats: ['grpc:repeated:1'] });
    try {
      runner.builder('b1');
      await submitAndCheck(db, dir, 'grpc', 'b1');
    } finally {
      await runner.stop();
      runner = undefined;
    }
  }, 240_000);

  it('over SSH: the machine\'s `nix-store --serve` runs the rounds and reports them', async () => {
    const machinesFile = join(dir, 'machines');
    writeFileSync(machinesFile, `${sshd!.line({ maxJobs: 2 })}\n`);
    runner = await InProcessRunner.start(db.url, dir, { jobsetRepeats: ['ssh:repeated:1'], machinesFiles: [machinesFile] });
    await submitAndCheck(db, dir, 'ssh', sshd!.spec().name);
  }, 240_000);
});
