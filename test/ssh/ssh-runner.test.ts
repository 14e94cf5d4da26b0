import { randomBytes } from 'node:crypto';
import { mkdtempSync, readFileSync, renameSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { hostStore } from '../../src/nix/private-store.ts';
import { runCli } from '../helpers/cli.ts';
import { useTestDatabase } from '../helpers/db.ts';
import { InProcessRunner } from '../helpers/in-process-runner.ts';
import { MK_DRV, runNix } from '../helpers/nix.ts';
import { copyFromCache, generateKey } from '../cache/fixtures.ts';
import { waitFor } from '../helpers/runtime.ts';
import { startSshdServe, type SshdServe } from '../helpers/sshd-serve.ts';

type Json = Record<string, any>; // eslint-disable-line @typescript-eslint/no-explicit-any

/** A runner whose only machine is an SSH machine of its machines file, edited while it runs. */
describe('SSH machines of a machines file, in the runner', () => {
  const db = useTestDatabase();
  let sshd: SshdServe;
  let runner: InProcessRunner | undefined;
  const dir = mkdtempSync(join(tmpdir(), 'hydrant-ssh-runner-'));
  const machinesFile = join(dir, 'machines');
  const writeMachines = (text: string) => {
    writeFileSync(`${machinesFile}.new`, text);
    renameSync(`${machinesFile}.new`, machinesFile);
  };
  beforeAll(async () => {
    sshd = await startSshdServe();
  });
  afterAll(async () => {
    await runner?.stop();
    await sshd?.stop();
  });

  it('builds a DAG there, drains a machine removed from the file, and takes it back when listed again', async () => {
    writeMachines(`# test machines\n${sshd.line({ maxJobs: 2 })}\nbroken-line\n`);
    runner = await InProcessRunner.start(db.url, dir, { machinesFiles: [machinesFile], machinesFilesCheckInS: 0.2 });
    const api = async (path: string): Promise<Json> => (await (await fetch(`${runner!.url}${path}`)).json()) as Json;
    const name = sshd.spec().name;
    await waitFor(async () => (await api('/status/machines')).machinesCount === 1, 90_000, 'the SSH machine to join');

    const nonce = randomBytes(4).toString('hex');
    const file = join(dir, 'release.nix');
    writeFileSync(
      file,
      `{ }: let ${MK_DRV}
        dep = mk { name = "sr-dep-${nonce}"; script = "echo dep-${nonce} > $out"; };
      in {
        top = mk { name = "sr-top-${nonce}"; script = "/bin/cat \${dep} > $out"; };
        slow = mk { name = "sr-slow-${nonce}"; script = "echo started; /bin/sleep 15; echo slow > $out"; };
      }`,
    );
    expect((await runCli(['submit', '--db-url', db.url, '--project', 'sr', '--jobset', 'main', '--create', '--file', file, '--attr', 'top'])).code).toBe(0);
    const finished = async (job: string) => (await db.pool.query('select finished, buildstatus from builds where job = $1', [job])).rows[0] as { finished: number; buildstatus: number } | undefined;
    await waitFor(async () => (await finished('top'))?.finished === 1, 60_000, 'top to finish');
    expect(await finished('top')).toEqual({ finished: 1, buildstatus: 0 });
    // Both steps ran on the SSH machine; the outputs are in the runner's store.
    const steps = (await db.pool.query("select s.drvpath, s.machine, s.status from buildsteps s join builds b on b.id = s.build where b.job = 'top' order by s.stepnr")).rows;
    expect(steps.map((s) => [s.machine, s.status])).toEqual([[name, 0], [name, 0]]);
    const out = (await db.pool.query("select o.path from buildoutputs o join builds b on b.id = o.build where b.job = 'top'")).rows[0].path as string;
    expect(readFileSync(out, 'utf8')).toBe(`dep-${nonce}\n`);
    await hostStore.runChecked('nix-store', ['--verify-path', out]);

    // Removed from the file while it builds: no new step, the running one ends, then the machine leaves.
    expect((await runCli(['submit', '--db-url', db.url, '--project', 'sr', '--jobset', 'main', '--file', file, '--attr', 'slow'])).code).toBe(0);
    await waitFor(async () => (await api('/status/steps')).steps.some((s: Json) => s.busyName === 'building'), 60_000, 'slow to build');
    writeMachines('# no machines\n');
    await waitFor(async () => (await api('/status/machines')).machines[name]?.state === 'draining', 30_000, 'the machine to drain');
    await waitFor(async () => (await finished('slow'))?.finished === 1, 60_000, 'slow to finish');
    expect(await finished('slow')).toEqual({ finished: 1, buildstatus: 0 });
    await waitFor(async () => (await api('/status/machines')).machinesCount === 0, 30_000, 'the machine to leave');

    writeMachines(`${sshd.line({ maxJobs: 1 })}\n`);
    await waitFor(async () => (await api('/status/machines')).machinesCount === 1, 90_000, 'the machine to come back');
    expect((await api('/status/machines')).machines[name]).toMatchObject({ maxJobs: 1, state: 'ready' });
  });

  it('builds a DAG across the SSH machine and a gRPC builder; every output reaches the signed cache', async () => {
    await runner?.stop();
    const key = await generateKey(dir, 'ssh-cache-1');
    const cacheDir = join(dir, 'cache');
    // The SSH machine takes only steps requiring "ssh" (a mandatory feature); the gRPC builder takes the others.
    writeMachines(`${sshd.line({ maxJobs: 1, mandatoryFeatures: 'ssh' })}\n`);
    runner = await InProcessRunner.start(db.url, dir, {
      machinesFiles: [machinesFile], machinesFilesCheckInS: 0.2,
      remoteStoreAddr: [`file://${cacheDir}?compression=zstd&secret-key=${key.secretFile}`],
    });
    runner.builder('b1');
    const api = async (path: string): Promise<Json> => (await (await fetch(`${runner!.url}${path}`)).json()) as Json;
    await waitFor(async () => (await api('/status/machines')).machinesCount === 2, 90_000, 'both machines to join');
    const nonce = randomBytes(4).toString('hex');
    const file = join(dir, 'mixed.nix');
    writeFileSync(
      file,
      `{ }: let ${MK_DRV} ssh = { requiredSystemFeatures = [ "ssh" ]; };
        base = mk { name = "mx-base-${nonce}"; script = "echo base-${nonce} > $out"; extra = ssh; };
        mid = mk { name = "mx-mid-${nonce}"; script = "echo mid > $out; /bin/cat \${base} >> $out; echo \${base} >> $out"; };
      in {
        inherit base mid;
        top = mk { name = "mx-top-${nonce}"; script = "/bin/cat \${mid} > $out; echo \${mid} >> $out"; extra = ssh; };
      }`,
    );
    expect((await runCli(['submit', '--db-url', db.url, '--project', 'sr', '--jobset', 'mixed', '--create', '--file', file])).code).toBe(0);
    const rows = async () => (await db.pool.query("select b.job, b.finished, b.buildstatus from builds b join jobsets j on j.id = b.jobset_id where j.name = 'mixed'")).rows;
    await waitFor(async () => (await rows()).length === 3 && (await rows()).every((r) => r.finished === 1), 120_000, 'the DAG to finish');
    expect(Object.fromEntries((await rows()).map((r) => [r.job, r.buildstatus]))).toEqual({ base: 0, mid: 0, top: 0 });
    const machineOf = async (job: string) =>
      (await db.pool.query("select s.machine from buildsteps s join builds b on b.id = s.build and s.drvpath = b.drvpath join jobsets j on j.id = b.jobset_id where j.name = 'mixed' and b.job = $1 and s.status = 0", [job])).rows.map((r) => r.machine);
    const name = sshd.spec().name;
    expect(await machineOf('base')).toEqual([name]);
    expect(await machineOf('mid')).toEqual(['b1']);
    expect(await machineOf('top')).toEqual([name]);
    const outs = (await db.pool.query("select o.path from buildoutputs o join builds b on b.id = o.build join jobsets j on j.id = b.jobset_id where j.name = 'mixed'")).rows.map((r) => r.path as string);
    expect(readFileSync(outs.find((o) => o.includes('mx-top'))!, 'utf8')).toContain(`base-${nonce}`);
    // Outputs that came back over SSH are in the cache, signed: real Nix copies them trusting only its key.
    for (const o of outs) expect(readFileSync(join(cacheDir, `${o.slice(11, 43)}.narinfo`), 'utf8')).toMatch(/^Sig: ssh-cache-1:/m);
    await copyFromCache(cacheDir, join(dir, 'elsewhere'), outs, key.publicKey);
    expect((await runNix('nix-store', ['--store', join(dir, 'elsewhere'), '--check-validity', '--print-invalid', ...outs])).stdout.toString()).toBe('');
  }, 180_000);

  it('a step on an SSH machine whose sshd is killed is retried on a gRPC builder, and the machine backs off', async () => {
    await runner?.stop();
    writeMachines(`${sshd.line({ maxJobs: 1 })}\n`);
    runner = await InProcessRunner.start(db.url, dir, { machinesFiles: [machinesFile], machinesFilesCheckInS: 0.2, retryInterval: 1, builderGraceInS: 0 });
    const api = async (path: string): Promise<Json> => (await (await fetch(`${runner!.url}${path}`)).json()) as Json;
    const name = sshd.spec().name;
    await waitFor(async () => (await api('/status/machines')).machinesCount === 1, 90_000, 'the SSH machine to join');
    const nonce = randomBytes(4).toString('hex');
    const file = join(dir, 'killed.nix');
    writeFileSync(file, `{ }: let ${MK_DRV} in { killed = mk { name = "sr-killed-${nonce}"; script = "echo started; /bin/sleep 600; echo done > $out"; }; }`);
    expect((await runCli(['submit', '--db-url', db.url, '--project', 'sr', '--jobset', 'main', '--file', file])).code).toBe(0);
    await waitFor(async () => (await api('/status/steps')).steps.some((s: Json) => s.machine === name && s.busyName === 'building'), 60_000, 'the step to build over SSH');
    // A gRPC builder joins, then the SSH machine dies mid-build.
    runner.builder('b1');
    await waitFor(async () => (await api('/status/machines')).machinesCount === 2, 90_000, 'the builder to join');
    await sshd.kill();
    await waitFor(async () => (await api('/status/steps')).steps.some((s: Json) => s.machine === 'b1'), 60_000, 'the retry on b1');
    const ssh = (await api('/status/machines')).machines[name];
    expect(ssh.stats.consecutiveFailures).toBeGreaterThanOrEqual(1);
    expect(ssh.stats.disabledUntil).toBeGreaterThan(0);
    const rows = async () => (await db.pool.query("select s.machine, s.busy from buildsteps s join builds b on b.id = s.build where b.job = 'killed' order by s.stepnr")).rows;
    // The attempt on b1 gets its row once its write goes through.
    await waitFor(async () => (await rows()).at(-1)?.machine === 'b1', 30_000, "b1's BuildSteps row");
    expect((await rows())[0]).toMatchObject({ machine: name, busy: 0 });
  });
});
