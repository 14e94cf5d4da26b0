import { randomBytes, randomInt } from 'node:crypto';
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { StepJob, StepOutcome } from '../../src/actors/builder-port.ts';
import { knownHostsLine, remoteVerdict, sshArgs, SshMachine } from '../../src/builder/ssh-machine.ts';
import { parseMachines } from '../../src/config/machines-file.ts';
import type { StepBusyCode } from '../../src/db/status.ts';
import { parseDerivation } from '../../src/nix/derivation.ts';
import { hostSystem } from '../../src/nix/host-system.ts';
import { hostStore } from '../../src/nix/private-store.ts';
import { queryPathInfos } from '../../src/nix/transfer.ts';
import { processesWithArg } from '../helpers/fleet.ts';
import { instantiate, MK_DRV, realise, runNix } from '../helpers/nix.ts';
import { waitFor } from '../helpers/runtime.ts';
import { startSshdServe, type SshdServe } from '../helpers/sshd-serve.ts';

const LIMITS = { maxSilentTime: 0, buildTimeout: 0, maxLogSize: 64 * 1024 * 1024, maxOutputSize: 2 * 1024 * 1024 * 1024 };

function jobFor(drvPath: string, over: Partial<StepJob> = {}): StepJob {
  const drv = parseDerivation(readFileSync(drvPath, 'utf8'));
  return { jobId: randomBytes(6).toString('hex'), drvPath, outputs: [...drv.outputs].map(([name, o]) => ({ name, path: o.path })), ...LIMITS, ...over };
}

function runJob(machine: SshMachine, job: StepJob): { outcome: Promise<StepOutcome>; busy: StepBusyCode[] } {
  const busy: StepBusyCode[] = [];
  const outcome = new Promise<StepOutcome>((resolve) => machine.start(job, resolve, (b) => busy.push(b)));
  return { outcome, busy };
}

/** A real sshd on loopback serving a private store with `nix-store --serve --write`, reached as Hydra reaches its machines. */
describe('an SSH build machine', () => {
  let sshd: SshdServe;
  let dataDir: string;
  const machines: SshMachine[] = [];
  const machine = (spec = sshd.spec()) => {
    const m = new SshMachine({ spec, hydraDataDir: dataDir, substitute: false });
    machines.push(m);
    return m;
  };
  beforeAll(async () => {
    sshd = await startSshdServe();
    dataDir = mkdtempSync(join(tmpdir(), 'hydrant-ssh-data-'));
  });
  afterAll(async () => {
    for (const m of machines) await m.close();
    await sshd?.stop();
    rmSync(dataDir, { recursive: true, force: true });
  });

  it('uses the ssh command line Hydra uses', () => {
    const spec = sshd.spec();
    expect(sshArgs(spec, '/tmp/x/known_hosts')).toEqual([
      '-i', sshd.keyFile, '-oUserKnownHostsFile=/tmp/x/known_hosts', '-p', String(sshd.port),
      '-x', '-a', '-oBatchMode=yes', '-oConnectTimeout=60', '-oTCPKeepAlive=yes', '--', 'root@127.0.0.1', 'nix-store', '--serve', '--write',
    ]);
  });

  it('maps remote build statuses as Hydra does, and writes column 8 as one known_hosts line', () => {
    const verdicts = Array.from({ length: 15 }, (_, status) => remoteVerdict(status));
    expect(verdicts).toEqual([
      { kind: 'success', cached: false }, // Built
      { kind: 'success', cached: true }, // Substituted
      { kind: 'success', cached: true }, // AlreadyValid
      { kind: 'failure', status: 1 }, // PermanentFailure
      { kind: 'failure', status: 1 }, // InputRejected
      { kind: 'failure', status: 1 }, // OutputRejected
      { kind: 'transient' }, // TransientFailure
      { kind: 'transient' }, // CachedFailure
      { kind: 'failure', status: 7 }, // TimedOut
      { kind: 'transient' }, // MiscFailure
      { kind: 'transient' }, // DependencyFailed
      { kind: 'failure', status: 10 }, // LogLimitExceeded
      { kind: 'failure', status: 12 }, // NotDeterministic
      { kind: 'success', cached: true }, // ResolvesToAlreadyValid
      { kind: 'transient' }, // NoSubstituters
    ]);
    const key = sshd.hostKey.split(' ').slice(0, 2).join(' ');
    expect(knownHostsLine(sshd.spec())).toBe(`[127.0.0.1]:${sshd.port} ${key}\n`);
    const { machines } = parseMachines(`root@builder.example x86_64-linux - 1 1 - - ${Buffer.from(sshd.hostKey).toString('base64')}`, 'test');
    expect(knownHostsLine(machines.get('root@builder.example')!)).toBe(`builder.example ${key}\n`);
  });

  it('builds a derivation with inputs there and brings the outputs back verified, over one connection', async () => {
    const nonce = randomBytes(4).toString('hex');
    const [dep, top, second] = await instantiate(`let ${MK_DRV}
      dep = mk { name = "ssh-dep-${nonce}"; script = "echo dep-${nonce} > $out"; };
    in [ dep
      (mk { name = "ssh-top-${nonce}"; script = "echo building top on the machine; /bin/cat \${dep} > $out; echo \${dep} > $doc"; extra = { outputs = [ "out" "doc" ]; }; })
      (mk { name = "ssh-second-${nonce}"; script = "echo second > $out"; }) ]`);
    const [depOut] = await realise([dep!]);
    const m = machine();
    const job = jobFor(top!);
    const { outcome, busy } = runJob(m, job);
    const r = await outcome;
    expect(r).toMatchObject({ kind: 'success' });
    if (r.kind !== 'success') return;
    expect(busy).toEqual([10, 20, 30, 40, 50]);
    const outs = new Map(job.outputs.map((o) => [o.name, o.path!]));
    expect(r.outputs.map((o) => [o.name, o.path]).sort()).toEqual([...outs].sort());
    // In the runner's store now, valid, with what the machine built and the hashes it claimed.
    expect(readFileSync(outs.get('out')!, 'utf8')).toBe(`dep-${nonce}\n`);
    await runNix('nix-store', ['--verify-path', outs.get('out')!, outs.get('doc')!]);
    const local = await queryPathInfos(hostStore, [outs.get('doc')!]);
    expect(local[0]!.references).toEqual([depOut]);
    expect(local[0]!.deriver).toBe(top);
    const remote = (await sshd.store.runChecked('nix-store', ['--query', '--hash', outs.get('doc')!])).stdout.toString().trim();
    expect(local[0]!.narHash.format('base32')).toBe(remote);
    // The input travelled to the machine; the build ran there (its log says so).
    expect((await sshd.store.run('nix-store', ['--check-validity', depOut!])).exitCode).toBe(0);
    expect(readFileSync(r.logFile, 'utf8')).toContain('building top on the machine');
    expect(r.outputs.find((o) => o.name === 'doc')!.closureSize).toBeGreaterThan(r.outputs.find((o) => o.name === 'doc')!.narSize);
    // The build's closure: the outputs' joint closure in the runner's store, as Nix counts it.
    const joint = JSON.parse((await runNix('nix', ['path-info', '--json', '--recursive', ...outs.values()])).stdout.toString()) as { narSize: number }[];
    expect(r.closureSize).toBe(joint.reduce((n, i) => n + i.narSize, 0));

    // The next step reuses the connection.
    expect((await runJob(m, jobFor(second!)).outcome).kind).toBe('success');
    expect(m.connectionsOpened).toBe(1);
  });

  it('refuses a machine whose host key is not the one in column 8, with one clear error', async () => {
    const other = mkdtempSync(join(tmpdir(), 'hydrant-otherkey-'));
    execFileSync('ssh-keygen', ['-q', '-t', 'ed25519', '-N', '', '-f', join(other, 'k')]);
    const wrongKey = readFileSync(join(other, 'k.pub'), 'utf8').trim();
    rmSync(other, { recursive: true, force: true });
    const nonce = randomBytes(4).toString('hex');
    const [d] = await instantiate(`let ${MK_DRV} in mk { name = "ssh-hk-${nonce}"; script = "echo x > $out"; }`);
    const r = await runJob(machine(sshd.spec({ hostKey: wrongKey })), jobFor(d!)).outcome;
    expect(r).toEqual({ kind: 'transient', machineFault: true, errorMsg: `${sshd.spec().name}: host key verification failed for ${sshd.spec().name}: the key it presents is not the one the machines file gives` });
  });

  it('refuses outputs whose NAR does not match the hash the machine claims, and imports nothing', async () => {
    const nonce = randomBytes(4).toString('hex');
    const file = join(dataDir, `corrupt-${nonce}.nix`);
    writeFileSync(file, `let ${MK_DRV} in mk { name = "ssh-corrupt-${nonce}"; script = "echo original > $out"; }`);
    const [drv] = await instantiate(readFileSync(file, 'utf8'));
    // Built on the machine beforehand, then altered there behind its database's back.
    expect((await sshd.store.runChecked('nix-instantiate', [file])).stdout.toString().trim()).toBe(drv);
    const out = (await sshd.store.runChecked('nix-store', ['--realise', drv!])).stdout.toString().trim();
    writeFileSync(sshd.store.realPath(out), 'tampered\n');
    const r = await runJob(machine(), jobFor(drv!)).outcome;
    expect(r).toMatchObject({ kind: 'transient', machineFault: true });
    expect(r.kind === 'transient' && r.errorMsg).toMatch(new RegExp(`${out}: its NAR hashes to`));
    expect((await hostStore.run('nix-store', ['--check-validity', out])).exitCode).not.toBe(0);
  });

  it('localhost builds with the runner\'s own store, nothing copied', async () => {
    const nonce = randomBytes(4).toString('hex');
    const [d] = await instantiate(`let ${MK_DRV} in mk { name = "ssh-localhost-${nonce}"; script = "echo here > $out"; }`);
    const { machines: specs } = parseMachines(`localhost ${hostSystem()} - 1`, 'test');
    const r = await runJob(machine(specs.get('localhost')!), jobFor(d!)).outcome;
    expect(r).toMatchObject({ kind: 'success' });
    expect(r.kind === 'success' && readFileSync(r.outputs[0]!.path, 'utf8')).toBe('here\n');
  });

  it('reports the limits the machine enforces: timeout (7), log size (10), output size (11), and a failing build (1)', async () => {
    const nonce = randomBytes(4).toString('hex');
    const [slow, loud, big, failing] = await instantiate(`let ${MK_DRV} in [
      (mk { name = "ssh-slow-${nonce}"; script = "echo start; /bin/sleep 30; echo late > $out"; })
      (mk { name = "ssh-loud-${nonce}"; script = "i=0; while [ $i -lt 2000 ]; do echo line $i of a loud build; i=$((i+1)); done; echo x > $out"; })
      (mk { name = "ssh-big-${nonce}"; script = "i=0; while [ $i -lt 200 ]; do echo some bytes of output $i; i=$((i+1)); done > $out"; })
      (mk { name = "ssh-fail-${nonce}"; script = "echo about to fail; exit 3"; })
    ]`);
    const m = machine();
    const [timedOut, logLimit, tooBig, failed] = await Promise.all([
      runJob(m, jobFor(slow!, { buildTimeout: 1 })).outcome,
      runJob(m, jobFor(loud!, { maxLogSize: 1000 })).outcome,
      runJob(m, jobFor(big!, { maxOutputSize: 1000 })).outcome,
      runJob(m, jobFor(failing!)).outcome,
    ]);
    expect(timedOut).toMatchObject({ kind: 'failure', status: 7 });
    expect(logLimit).toMatchObject({ kind: 'failure', status: 10 });
    expect(tooBig).toMatchObject({ kind: 'failure', status: 11 });
    expect(failed).toMatchObject({ kind: 'failure', status: 1 });
    expect(failed.kind === 'failure' && failed.errorMsg).toMatch(/exit code 3/);
    expect(failed.kind === 'failure' && readFileSync(failed.logFile, 'utf8')).toContain('about to fail');
    // An output over the limit is not brought back.
    const bigOut = jobFor(big!).outputs[0]!.path!;
    expect((await hostStore.run('nix-store', ['--check-validity', bigOut])).exitCode).not.toBe(0);
  });

  it('aborting a step ends its connection, and with it the build on the machine', async () => {
    const nonce = randomBytes(4).toString('hex');
    const sleep = `60.${String(randomInt(1, 1_000_000)).padStart(6, '0')}1`;
    const [slow] = await instantiate(`let ${MK_DRV} in mk { name = "ssh-abort-${nonce}"; script = "echo started; /bin/sleep ${sleep}; echo late > $out"; }`);
    const m = machine();
    let reported = false;
    const job = jobFor(slow!);
    m.start(job, () => (reported = true), () => {});
    await waitFor(() => processesWithArg(sleep).length > 0, 30_000, 'the remote build to start');
    m.abort(job.jobId);
    await waitFor(() => processesWithArg(sleep).length === 0, 30_000, 'the remote build to end');
    expect(reported).toBe(false);
  });

  it('a killed sshd fails the step as the machine\'s fault', async () => {
    const nonce = randomBytes(4).toString('hex');
    const sleep = `60.${String(randomInt(1, 1_000_000)).padStart(6, '0')}2`;
    const [slow] = await instantiate(`let ${MK_DRV} in mk { name = "ssh-killed-${nonce}"; script = "/bin/sleep ${sleep}; echo late > $out"; }`);
    const { outcome } = runJob(machine(), jobFor(slow!));
    await waitFor(() => processesWithArg(sleep).length > 0, 30_000, 'the remote build to start');
    await sshd.kill();
    const r = await outcome;
    expect(r).toMatchObject({ kind: 'transient', machineFault: true });
    expect(r.kind === 'transient' && r.errorMsg).toMatch(/connection to .* ended/);
  });
});
