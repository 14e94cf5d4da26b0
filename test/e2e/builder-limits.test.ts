import { randomBytes, randomInt } from 'node:crypto';
import { existsSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import { buildRow, busySteps, joined, processesWithArg, readBuildLog, startBuilder, startRunner, stepRows, submit, useFleet, type RunnerProcess } from '../helpers/fleet.ts';
import { MK_DRV, runNix } from '../helpers/nix.ts';
import { waitFor } from '../helpers/runtime.ts';

/**
 * Per-step limits and cancellation through the whole stack: a `hydrant serve`
 * runner, two `hydrant builder` processes with private stores, real gRPC,
 * real PostgreSQL, real Nix.
 *
 * Where each limit comes from, as on a Hydra installation:
 * - build timeout and silence timeout: per build, from the job's
 *   `meta.timeout` / `meta.maxSilent`, which the evaluator (`hydrant submit`)
 *   writes into Builds.timeout / Builds.maxsilent; the runner's
 *   `buildTimeout` / `maxSilentTime` are only defaults. Setting them in the
 *   runner configuration would time out every build of the installation.
 * - log size and output size: runner-wide (`maxLogSize`, `maxOutputSize`),
 *   as Hydra has no per-build columns for them.
 */

const MAX_LOG_SIZE = 16 * 1024;
const MAX_OUTPUT_SIZE = 64 * 1024;

/** A `sleep` argument no other process on the machine has, to find the build's processes by. */
function uniqueSleep(seconds: number): string {
  return `${seconds}.${String(randomInt(1, 1_000_000)).padStart(6, '0')}1`;
}

describe('step limits and cancellation through runner and builder processes', () => {
  // Whatever is left of the builds' sleeps when a test failed goes with the fleet.
  const { db, dir, procs } = useFleet('limits', () => {
    for (const pid of Object.values(sleeps).flatMap((a) => processesWithArg(a))) {
      try {
        process.kill(pid, 'SIGKILL');
      } catch {
        // gone meanwhile
      }
    }
  });
  const nonce = randomBytes(4).toString('hex');
  const sleeps = { timedOut: uniqueSleep(60), silent: uniqueSleep(60), logLimit: uniqueSleep(60), sleeper: uniqueSleep(600) };
  const started = join(dir, `started-${nonce}`);
  const finished = join(dir, `finished-${nonce}`);
  const file = join(dir, 'release.nix');
  let runner: RunnerProcess;

  beforeAll(async () => {
    writeFileSync(
      file,
      `{ }: let ${MK_DRV}
      in {
        ok = mk { name = "ok-${nonce}"; script = "echo fine > $out"; };
        timedOut = mk { name = "timed-out-${nonce}"; script = "echo started; /bin/sleep ${sleeps.timedOut}; echo late > $out"; } // { meta.timeout = 2; };
        silent = mk { name = "silent-${nonce}"; script = "echo started; /bin/sleep ${sleeps.silent}; echo late > $out"; } // { meta.maxSilent = 2; };
        chatty = mk { name = "chatty-${nonce}"; script = "for i in 1 2 3 4 5 6 7 8; do echo tick $i; /bin/sleep 0.5; done; echo done > $out"; } // { meta.maxSilent = 2; };
        logLimit = mk { name = "log-limit-${nonce}"; script = "/bin/sleep ${sleeps.logLimit} & i=0; while [ $i -lt 4000 ]; do echo \\"line $i of a log far longer than the limit\\"; i=$((i+1)); done; wait"; };
        bigOutput = mk { name = "big-output-${nonce}"; script = "/usr/bin/head -c 262144 /dev/zero > $out"; };
        sleeper = mk { name = "sleeper-${nonce}"; script = "echo started > ${started}; /bin/sleep ${sleeps.sleeper}; echo finished > ${finished}; echo done > $out"; };
      }`,
    );
    runner = await startRunner(dir, db.url, `maxLogSize = ${MAX_LOG_SIZE}\nmaxOutputSize = ${MAX_OUTPUT_SIZE}`);
    procs.push(runner.proc);
    for (const id of ['b1', 'b2']) procs.push(startBuilder(dir, `127.0.0.1:${runner.port}`, runner.tokenFile, id, 'maxJobs = 3'));
    await joined(runner.proc, ['b1', 'b2']);
  });

  it('reports timeouts as 7, the log limit as 10 and the output size limit as 11, and builds within the limits', async () => {
    const ids = await submit(db.url, file, 'limits', ['ok', 'timedOut', 'silent', 'chatty', 'logLimit', 'bigOutput']);
    expect(Object.keys(ids).sort()).toEqual(['bigOutput', 'chatty', 'logLimit', 'ok', 'silent', 'timedOut']);
    // The evaluator put the jobs' meta limits into the Builds rows.
    const limits = (await db.pool.query('select job, timeout, maxsilent from builds where id = any($1) order by job', [Object.values(ids)])).rows;
    expect(limits.find((r) => r.job === 'timedOut')).toMatchObject({ timeout: 2 });
    expect(limits.find((r) => r.job === 'silent')).toMatchObject({ maxsilent: 2 });

    await waitFor(async () => (await db.pool.query('select count(*)::int n from builds where finished = 0')).rows[0].n === 0, 120_000, 'builds to finish');
    const status: Record<string, number | null> = {};
    for (const [job, id] of Object.entries(ids)) status[job] = (await buildRow(db.pool, id)).buildstatus;
    expect(status).toEqual({ ok: 0, chatty: 0, timedOut: 7, silent: 7, logLimit: 10, bigOutput: 11 });

    // Each failed build has one step row (limits are permanent failures, never retried) with the build's status.
    for (const job of ['timedOut', 'silent', 'logLimit', 'bigOutput'] as const) {
      const rows = await stepRows(db.pool, ids[job]!);
      expect(rows.map((r) => [r.status, r.busy]), job).toEqual([[status[job], 0]]);
      expect(['b1', 'b2']).toContain(rows[0]!.machine);
    }
    // Nix said which limit it was.
    const msg = async (job: string) => (await stepRows(db.pool, ids[job]!))[0]!.errormsg ?? '';
    expect(await msg('timedOut')).toMatch(/timed out after 2 seconds/);
    expect(await msg('timedOut')).not.toMatch(/silence/);
    expect(await msg('silent')).toMatch(/timed out after 2 seconds of silence/);
    expect(await msg('logLimit')).toMatch(/log limit/);
    expect(await msg('bigOutput')).toMatch(/over the limit of 65536/);
    expect(await busySteps(db.pool)).toBe(0);

    // Limits are not deterministic build failures: nothing goes into FailedPaths.
    expect((await db.pool.query('select count(*)::int n from failedpaths')).rows[0].n).toBe(0);

    // The stored log stops at the limit.
    const log = readBuildLog(dir, (await buildRow(db.pool, ids.logLimit!)).drvpath);
    expect(log?.length).toBeGreaterThan(0);
    expect(log!.length).toBeLessThanOrEqual(MAX_LOG_SIZE);
    expect(log!.toString('utf8')).toContain('of a log far longer than the limit');

    // Outputs within the limits reached the runner's store; the oversized one did not.
    const outputs = Object.fromEntries(
      (await db.pool.query('select b.job, o.path from buildoutputs o join builds b on b.id = o.build where b.id = any($1)', [Object.values(ids)])).rows.map((r) => [r.job, r.path as string]),
    );
    const valid = async (p: string) => (await runNix('nix-store', ['--check-validity', '--print-invalid', p])).stdout.toString() === '';
    expect(await valid(outputs.ok!)).toBe(true);
    expect(await valid(outputs.chatty!)).toBe(true);
    expect(await valid(outputs.bigOutput!)).toBe(false);

    // No process of a stopped build is left behind on the builders.
    for (const job of ['timedOut', 'silent', 'logLimit'] as const) {
      await waitFor(() => processesWithArg(sleeps[job]).length === 0, 15_000, `the processes of ${job} to be gone`);
    }
  }, 180_000);

  it('kills the build on its builder when the only build needing the step is cancelled', async () => {
    const ids = await submit(db.url, file, 'cancel', ['sleeper']);
    const id = ids.sleeper!;
    // The sleeper sleeps far longer than the test runs: it is still building when cancelled, however slow the machine.
    await waitFor(() => existsSync(started), 60_000, 'the sleeper to start building');
    // The build really runs on a builder, in a step row marked busy (the script writes its file
    // just before it starts the sleep, so the sleep may not be there yet).
    await waitFor(() => processesWithArg(sleeps.sleeper).length > 0, 60_000, 'the sleep to run on a builder');
    await waitFor(async () => (await stepRows(db.pool, id)).some((r) => r.busy !== 0), 60_000, 'a busy step row');
    const [row] = await stepRows(db.pool, id);
    expect(['b1', 'b2']).toContain(row!.machine);

    // Cancel it as Hydra's web interface does (its trigger sends builds_cancelled).
    const now = Math.floor(Date.now() / 1000);
    const cancelled = await db.pool.query('update builds set finished = 1, buildstatus = 4, iscachedbuild = 0, starttime = $2, stoptime = $2 where id = $1 and finished = 0', [id, now]);
    expect(cancelled.rowCount).toBe(1);

    await waitFor(async () => (await stepRows(db.pool, id)).every((r) => r.busy === 0), 30_000, 'the step row to end');
    const rows = await stepRows(db.pool, id);
    expect(rows.map((r) => [r.status, r.busy, r.machine])).toEqual([[4, 0, row!.machine]]);
    await waitFor(() => processesWithArg(sleeps.sleeper).length === 0, 15_000, 'the build process on the builder to be killed');
    await runner.proc.waitFor(/"msg":"step no longer needed; aborted"/, 5_000);
    await procs[row!.machine === 'b1' ? 1 : 2]!.waitFor(/job \S+ aborted: no build needs this step any more/, 5_000);

    // Its sleep was killed, not finished: the build never got past it.
    expect(existsSync(finished)).toBe(false);
    const b = await buildRow(db.pool, id);
    expect([b.finished, b.buildstatus]).toEqual([1, 4]);
    const out = (await db.pool.query('select path from buildoutputs where build = $1', [id])).rows[0].path as string;
    expect((await runNix('nix-store', ['--check-validity', '--print-invalid', out])).stdout.toString()).toBe(`${out}\n`);
    expect(await busySteps(db.pool)).toBe(0);
  }, 120_000);
});
