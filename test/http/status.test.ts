import { randomBytes } from 'node:crypto';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { runCli } from '../helpers/cli.ts';
import { useInProcessRunner } from '../helpers/in-process-runner.ts';
import { MK_DRV } from '../helpers/nix.ts';
import { waitFor } from '../helpers/runtime.ts';

type Json = Record<string, any>; // eslint-disable-line @typescript-eslint/no-explicit-any

describe('status API of a runner with a real builder', () => {
  const { db, dir, start } = useInProcessRunner('status');

  it('reports machines, builds, running and runnable steps, queues and build trees, with why steps wait', async () => {
    const runner = await start({
      // A lost builder's job waits 10 minutes before its retry; an unsupported step waits an hour before failing.
      retryInterval: 600, maxUnsupportedTimeInS: 3600, builderGraceInS: 0, builderPingTimeoutInS: 2,
    });
    const base = runner.url;
    const api = async (path: string): Promise<Json> => {
      const r = await fetch(`${base}${path}`);
      expect(r.status, path).toBe(200);
      return (await r.json()) as Json;
    };
    const builder = runner.builder('b1');
    await waitFor(async () => (await api('/status/machines')).machinesCount === 1, 90_000, 'the builder to join');

    const nonce = randomBytes(4).toString('hex');
    const file = join(dir, 'release.nix');
    const submit = async (jobs: string, create: boolean) => {
      writeFileSync(file, `{ }: let ${MK_DRV} in { ${jobs} }`);
      expect((await runCli(['submit', '--db-url', db.url, '--project', 'st', '--jobset', 'main', ...(create ? ['--create'] : []), '--file', file])).code).toBe(0);
    };
    // quick first, alone: the builder has one slot, and slow must be the step running when the API is read.
    await submit(`quick = mk { name = "quick-${nonce}"; script = "echo quick > $out"; };`, true);
    await waitFor(async () => (await db.pool.query("select finished from builds where job = 'quick'")).rows[0]?.finished === 1, 60_000, 'quick');
    await submit(
      `slow = mk { name = "slow-${nonce}"; script = "/bin/sleep 45; echo slow > $out"; };
       elsewhere = (mk { name = "elsewhere-${nonce}"; script = "echo > $out"; extra = { system = "riscv64-linux"; }; });`,
      false,
    );
    const ids = Object.fromEntries((await db.pool.query('select job, id from builds')).rows.map((r) => [r.job, r.id as number]));
    await waitFor(async () => (await api('/status/steps')).steps.some((s: Json) => s.busyName === 'building'), 30_000, 'slow to build');
    // Both builds come from one evaluation but load one after the other: read the status once both are held.
    await waitFor(async () => (await api('/status')).buildsQueued === 2, 30_000, 'both builds to load');

    const status = await api('/status');
    expect(status).toMatchObject({ status: 'running', machinesCount: 1, buildsQueued: 2, running: 1, runnable: 1 });
    // As Hydra's Rust runner's /status: machines keyed by name, and the queueRunner totals.
    expect(Object.keys(status.machines)).toEqual(['b1']);
    expect(status.queueRunner).toMatchObject({ status: 'up', nrStepsBuilding: 1, nrBuildsUnfinished: 2, machinesTotal: 1, machinesInUse: 1 });
    expect(status.counters.buildsSucceeded).toBe(1);

    const machines = await api('/status/machines');
    // One job slot (the builder's default here), taken: the machine is full.
    expect(machines.machines.b1).toMatchObject({ hostname: 'b1', state: 'busy', maxJobs: 1, hasCapacity: false });
    expect(machines.machines.b1.systems).toContain('x86_64-linux');
    expect(machines.machines.b1.jobs).toEqual([expect.stringMatching(new RegExp(`slow-${nonce}\\.drv$`))]);
    expect(machines.machines.b1.stats).toMatchObject({ currentJobs: 1, nrStepsDone: 1, succeededBuilds: 1, failedBuilds: 0, consecutiveFailures: 0, idleSince: 0 });
    expect(machines.machines.b1.stats.totalStepTimeMs).toBeGreaterThan(0);

    const steps = await api('/status/steps');
    expect(steps.stepCount).toBe(1);
    expect(steps.steps[0]).toMatchObject({ machine: 'b1', buildId: ids.slow, state: 'building', busyName: 'building' });

    const builds = await api('/status/builds?limit=1');
    expect(builds.buildCount).toBe(2);
    expect(builds.builds).toHaveLength(1);
    expect((await api('/status/builds')).builds.map((b: Json) => b.id).sort()).toEqual([ids.slow, ids.elsewhere].sort());

    const jobsets = await api('/status/jobsets');
    expect(jobsets.jobsets['st:main']).toMatchObject({ project: 'st', name: 'main', shares: 100 });
    expect(jobsets.jobsets['st:main'].seconds).toBeGreaterThanOrEqual(0);

    // No machine builds riscv64-linux: the step says so, and when it will be failed as unsupported.
    const runnable = await api('/status/runnable');
    expect(runnable.stepCount).toBe(1);
    expect(runnable.steps[0]).toMatchObject({ system: 'riscv64-linux', buildId: ids.elsewhere, waiting: { kind: 'noMachine', system: 'riscv64-linux', features: [] } });
    expect(runnable.steps[0].waiting.failsAt).toBeGreaterThan(Date.now() + 3000 * 1000);
    const queues = await api('/status/queues');
    expect(queues.queues['riscv64-linux|']).toMatchObject({ runnable: 1, capableMachines: [] });
    expect(queues.queues['x86_64-linux|']).toMatchObject({ runnable: 0, capableMachines: ['b1'] });
    expect(Object.keys((await api('/status/queues/jobs')).queues)).toEqual(['riscv64-linux|']);

    const tree = await api(`/status/build/${ids.slow}`);
    expect(tree.build).toMatchObject({ id: ids.slow, project: 'st', jobset: 'main' });
    expect(tree.steps).toEqual([expect.objectContaining({ state: 'building', machine: 'b1', deps: [], waiting: null })]);

    // The builder dies mid-build: its step waits for a retry, and says until when.
    builder.child.kill('SIGKILL');
    await waitFor(async () => (await api('/status/queues/scheduled')).stepCount === 1, 30_000, 'the step to wait for a retry');
    const scheduled = await api('/status/queues/scheduled');
    expect(scheduled.steps[0]).toMatchObject({ state: 'retryWait', tries: 1, waiting: { kind: 'retryDelay', tries: 1 } });
    expect(scheduled.steps[0].retryAt).toBeGreaterThan(Date.now() / 1000 + 400);
    const after = await api(`/status/build/${ids.slow}`);
    expect(after.steps[0]).toMatchObject({ state: 'retryWait', machine: null, waiting: { kind: 'retryDelay' } });
    expect((await api('/status/machines')).machinesCount).toBe(0);

    // Bad requests get one clear error.
    expect((await fetch(`${base}/status/build/999999`)).status).toBe(404);
    expect((await fetch(`${base}/status/builds?limit=-1`)).status).toBe(400);
  }, 180_000);
});
