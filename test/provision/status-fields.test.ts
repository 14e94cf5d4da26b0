import { randomBytes } from 'node:crypto';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { hostSystem } from '../../src/nix/host-system.ts';
import { statusReader } from '../../src/provision/runner-status.ts';
import { countedRunnables } from '../../src/provision/wanted.ts';
import { runCli } from '../helpers/cli.ts';
import { createTestDatabase, type TestDatabase } from '../helpers/db.ts';
import { InProcessRunner } from '../helpers/in-process-runner.ts';
import { MK_DRV } from '../helpers/nix.ts';
import { waitFor } from '../helpers/runtime.ts';

/**
 * The status fields `hydrant provision` reads beyond Hydra's: steps held
 * only by disabled machines are reported (waitingOnDisabled) and not counted.
 */
describe('the runner status the provisioner reads', () => {
  let db: TestDatabase;
  let runner: InProcessRunner | undefined;
  const dir = mkdtempSync(join(tmpdir(), 'hydrant-provision-status-'));
  beforeAll(async () => {
    db = await createTestDatabase();
  });
  afterAll(async () => {
    await runner?.stop();
    await db.drop();
  });

  it('reports runnable steps whose only machine is disabled, and the provisioner does not count them', async () => {
    runner = await InProcessRunner.start(db.url, dir, { maxUnsupportedTimeInS: 3600, retryInterval: 3600 });
    runner.builder('b1');
    const dispatcher = runner.daemon.runtime!.scheduler.dispatcher;
    await waitFor(() => dispatcher.machines.has('b1'), 90_000, 'the builder to join');
    // The machine failed in a way that disables it (for an hour: retryInterval).
    dispatcher.machineFailed(dispatcher.machines.get('b1')!);
    expect(dispatcher.machines.get('b1')!.state).toBe('disabled');

    const nonce = randomBytes(4).toString('hex');
    const file = join(dir, 'release.nix');
    writeFileSync(file, `{ }: let ${MK_DRV} in { a = mk { name = "held-a-${nonce}"; script = "echo > $out"; }; b = mk { name = "held-b-${nonce}"; script = "echo > $out"; }; }`);
    expect((await runCli(['submit', '--db-url', db.url, '--project', 'ps', '--jobset', 'main', '--create', '--file', file])).code).toBe(0);

    const read = statusReader({ statusUrl: runner.url });
    let doc = await read();
    await waitFor(async () => ((doc = await read()).machineTypes[hostSystem()]?.runnable ?? 0) === 2, 60_000, 'two runnable steps');
    expect(doc.machineTypes[hostSystem()]).toMatchObject({ runnable: 2, waitingOnDisabled: 2, retryWaiting: 0 });
    expect(countedRunnables(doc.machineTypes[hostSystem()])).toBe(0);
  }, 120_000);
});
