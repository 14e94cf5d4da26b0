import { randomBytes } from 'node:crypto';
import { mkdtempSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { hostSystem } from '../../src/nix/host-system.ts';
import { runCli } from '../helpers/cli.ts';
import { useTestDatabase } from '../helpers/db.ts';
import { InProcessRunner } from '../helpers/in-process-runner.ts';
import { writeRelease } from '../helpers/nix.ts';
import { waitFor } from '../helpers/runtime.ts';

type Json = Record<string, any>; // eslint-disable-line @typescript-eslint/no-explicit-any

/**
 * What hydra-provisioner reads from its statusCommand's output, and nothing
 * else: `status`, `uptime`, `machineTypes[type].runnable`,
 * `machineTypes[type].running` (older releases), `machineTypes[type].lastActive`
 * (absent while the type runs something, read with a default of 0) and
 * `machines[name].currentJobs`.
 */
function provisionerView(doc: Json, machineName: string) {
  return {
    status: doc.status as string,
    uptime: doc.uptime as number,
    types: Object.fromEntries(
      Object.entries(doc.machineTypes as Record<string, Json>).map(([t, s]) => [t, { runnable: s.runnable as number, running: s.running as number, lastActive: (s.lastActive ?? 0) as number }]),
    ),
    currentJobs: doc.machines[machineName]?.currentJobs as number | undefined,
  };
}

describe('hydrant status', () => {
  const db = useTestDatabase();
  let runner: InProcessRunner | undefined;
  const dir = mkdtempSync(join(tmpdir(), 'hydrant-status-cli-'));
  afterAll(async () => {
    await runner?.stop();
  });

  it('prints the --status document hydra-provisioner reads, from a running runner', async () => {
    // shutdownGraceInS: the stop in afterAll has nothing to wait for (slow sleeps on, its builder killed first).
    runner = await InProcessRunner.start(db.url, dir, { maxUnsupportedTimeInS: 3600, shutdownGraceInS: 1 });
    runner.builder('b1');
    await waitFor(async () => ((await (await fetch(`${runner!.url}/status/machines`)).json()) as Json).machinesCount === 1, 90_000, 'the builder to join');
    const nonce = randomBytes(4).toString('hex');
    const file = writeRelease(
      dir,
      `slow = mk { name = "st-slow-${nonce}"; script = "/bin/sleep 600; echo slow > $out"; };
        elsewhere = mk { name = "st-elsewhere-${nonce}"; script = "echo > $out"; extra = { system = "riscv64-linux"; requiredSystemFeatures = [ "kvm" "big-parallel" ]; }; };`,
    );
    expect((await runCli(['submit', '--db-url', db.url, '--project', 'st', '--jobset', 'main', '--create', '--file', file])).code).toBe(0);
    await waitFor(async () => ((await (await fetch(`${runner!.url}/status/steps`)).json()) as Json).steps.some((s: Json) => s.busyName === 'building'), 60_000, 'slow to build');
    await waitFor(async () => ((await (await fetch(`${runner!.url}/status`)).json()) as Json).runnable === 1, 30_000, 'elsewhere to be runnable');

    const r = await runCli(['status', '--url', runner.url]);
    expect(r.code).toBe(0);
    const doc = JSON.parse(r.stdout) as Json;
    const view = provisionerView(doc, 'b1');
    expect(view.status).toBe('up');
    expect(view.uptime).toBeGreaterThanOrEqual(0);
    expect(view.currentJobs).toBe(1);
    // Hydra's machine types: the system, then `:` and the required features, sorted.
    expect(view.types).toEqual({
      [hostSystem()]: { runnable: 0, running: 1, lastActive: 0 },
      'riscv64-linux:big-parallel,kvm': { runnable: 1, running: 0, lastActive: 0 },
    });
    // waitTime while runnable, lastActive only while nothing runs (as Hydra prints them).
    expect(doc.machineTypes['riscv64-linux:big-parallel,kvm'].waitTime).toBeGreaterThanOrEqual(0);
    expect(doc.machineTypes[hostSystem()]).not.toHaveProperty('lastActive');
    expect(doc.machineTypes[hostSystem()]).not.toHaveProperty('waitTime');
    // Hydrant's additions for `hydrant provision`: nothing waits on a disabled machine or a retry delay here.
    expect(doc.machineTypes['riscv64-linux:big-parallel,kvm']).toMatchObject({ waitingOnDisabled: 0, retryWaiting: 0 });
    expect(doc.machines.b1).toMatchObject({ enabled: true, systemTypes: expect.arrayContaining([hostSystem()]), nrStepsDone: 0, consecutiveFailures: 0 });
    expect(doc.machines.b1).not.toHaveProperty('idleSince');
  });

  it('prints {"status":"down"} when no runner answers', async () => {
    const srv = createServer();
    await new Promise<void>((res) => srv.listen(0, '127.0.0.1', res));
    const port = (srv.address() as { port: number }).port;
    await new Promise<void>((res) => srv.close(() => res()));
    const r = await runCli(['status', '--url', `http://127.0.0.1:${port}`]);
    expect(r.code).toBe(0);
    expect(JSON.parse(r.stdout)).toEqual({ status: 'down' });
  });
});
