import { chmodSync, existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { parseMachines } from '../../src/config/machines-file.ts';
import { parseProvisionerConfig, type ProvisionerConfig } from '../../src/config/provisioner-config.ts';
import { CommandBackend } from '../../src/provision/command-backend.ts';
import { Provisioner, type PassReport } from '../../src/provision/provisioner.ts';
import { startStatusServer } from '../../src/provision/status-server.ts';
import { statusReader } from '../../src/provision/runner-status.ts';
import { runCli } from '../helpers/cli.ts';
import { quietLog } from '../helpers/runtime.ts';

const root = mkdtempSync(join(tmpdir(), 'hydrant-provision-cmd-'));
afterAll(() => rmSync(root, { recursive: true, force: true }));

/**
 * A cloud of files: each machine is `$CLOUD/<id>.json`. The scripts read
 * the machine's JSON on stdin as a cloud CLI would (python3 parses it).
 */
function cloud(name: string, { failCreate = false } = {}): { dir: string; scripts: { create: string[]; destroy: string[]; list: string[] }; status: string; calls: () => string[] } {
  const dir = join(root, name);
  const machines = join(dir, 'cloud');
  const script = (op: string, body: string): string[] => {
    const file = join(dir, `${op}.sh`);
    writeFileSync(file, `#!/bin/sh\nset -e\nmkdir -p ${machines}\nIN=$(cat)\necho "${op} $IN" >> ${dir}/calls\n${body}\n`);
    chmodSync(file, 0o755);
    return [file];
  };
  const py = (code: string): string => `python3 -c '${code}' "$IN"`;
  mkdirSync(dir, { recursive: true });
  const scripts = {
    create: script(
      'create',
      failCreate
        ? 'echo "quota exceeded for this region" >&2; exit 1'
        : py(`import json,sys; d=json.loads(sys.argv[1]); m={"id":d["id"],"state":"running","type":d["type"],"sshName":"root@"+d["id"]+".example","hostKey":"ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIKt"}; open("${machines}/"+d["id"]+".json","w").write(json.dumps(m)); print(json.dumps(m))`),
    ),
    destroy: script('destroy', py(`import json,sys,os; d=json.loads(sys.argv[1]); os.remove("${machines}/"+d["id"]+".json")`)),
    list: script('list', py(`import json,sys,os,glob; print(json.dumps([json.load(open(f)) for f in glob.glob("${machines}/*.json")]))`)),
  };
  const status = join(dir, 'status.json');
  writeFileSync(status, JSON.stringify({ status: 'up', machineTypes: {}, machines: {} }));
  return { dir, scripts, status, calls: () => (existsSync(join(dir, 'calls')) ? readFileSync(join(dir, 'calls'), 'utf8').trim().split('\n') : []) };
}


function config(c: ReturnType<typeof cloud>, extra: Record<string, unknown> = {}, type: Record<string, unknown> = {}): ProvisionerConfig {
  return parseProvisionerConfig(
    {
      stateDir: join(c.dir, 'state'),
      statusCommand: ['cat', c.status],
      maxCreatesPerPass: 4,
      retryMin: 10,
      retryMax: 40,
      machinesFile: join(c.dir, 'machines'),
      backend: { type: 'command', ...c.scripts },
      systemTypes: { 'x86_64-linux:kvm,big': { maxMachines: 3, runnablesPerMachine: 10, maxJobs: 4, speedFactor: 2, sshKey: '/etc/hydra/id_buildfarm', gracePeriod: 60, ...type } },
      ...extra,
    },
    'test.toml',
  );
}

describe('hydrant provision with the command backend', () => {
  it('creates SSH machines by command, writes a machines file the runner reads back, destroys them idle after the grace period', async () => {
    const c = cloud('ssh');
    const cfg = config(c);
    let now = 1_000_000;
    const setStatus = (runnable: number, machines: Record<string, { currentJobs: number }>): void =>
      writeFileSync(c.status, JSON.stringify({ status: 'up', machineTypes: { 'x86_64-linux:kvm,big': { runnable, running: 0 } }, machines }));
    const make = (): Provisioner => new Provisioner({ config: cfg, backend: new CommandBackend(cfg.backend as never, cfg.tag), readStatus: statusReader(cfg), log: quietLog, now: () => now });
    let p = make();

    setStatus(25, {});
    const r1 = await p.pass();
    expect(r1.types['x86_64-linux:kvm,big']).toMatchObject({ runnable: 25, wanted: 3, running: 3 });
    const ids = readdirSync(join(c.dir, 'cloud')).map((f) => f.replace(/\.json$/, '')).sort();
    expect(ids).toHaveLength(3);
    expect(r1.machines.map((m) => m.state)).toEqual(['joining', 'joining', 'joining']);
    // The create command got the machine's description on stdin.
    const create = JSON.parse(c.calls().find((l) => l.startsWith('create '))!.slice(7));
    expect(create).toMatchObject({ type: 'x86_64-linux:kvm,big', system: 'x86_64-linux', features: ['kvm', 'big'], maxJobs: 4, speedFactor: 2, tag: 'hydrant-provisioned' });

    const file = join(c.dir, 'machines');
    expect(statSync(file).mode & 0o777).toBe(0o600);
    // Each machine's snapshot, readable by the provisioner only.
    for (const id of ids) expect(statSync(join(c.dir, 'state', 'machines', `${id}.json`)).mode & 0o777).toBe(0o600);
    const parsed = parseMachines(readFileSync(file, 'utf8'), file);
    expect(parsed.errors).toEqual([]);
    expect([...parsed.machines.keys()].sort()).toEqual(ids.map((id) => `root@${id}.example`));
    const m = parsed.machines.get(`root@${ids[0]}.example`)!;
    expect(m).toMatchObject({ systems: ['x86_64-linux', 'i686-linux'], sshKey: '/etc/hydra/id_buildfarm', maxJobs: 4, speedFactor: 2, mandatoryFeatures: ['kvm', 'big'], publicHostKey: 'ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIKt' });
    expect([...m.supportedFeatures].sort()).toEqual(['big', 'kvm']);

    // A restarted provisioner (its snapshots read back) sees them join; one is busy, the queue empties.
    p.close();
    p = make();
    now += 1000;
    setStatus(0, Object.fromEntries(ids.map((id, i) => [`root@${id}.example`, { currentJobs: i === 0 ? 1 : 0 }])));
    const r2 = await p.pass();
    expect(r2.machines.map((x) => x.state).sort()).toEqual(['active', 'idle', 'idle']);
    expect(readdirSync(join(c.dir, 'cloud'))).toHaveLength(3); // within the grace period: kept

    now += 61_000;
    const r3 = await p.pass();
    expect(r3.machines.map((x) => x.state)).toEqual(['active']);
    expect(readdirSync(join(c.dir, 'cloud'))).toEqual([`${ids[0]}.json`]);
    expect(c.calls().filter((l) => l.startsWith('destroy '))).toHaveLength(2);
    expect(parseMachines(readFileSync(file, 'utf8'), file).machines.size).toBe(1);
    expect(r3.counters).toMatchObject({ created: 0, destroyed: 2 }); // counters are this process's
    p.close();
  });

  it('retries a failing create with backoff, reports it, and never exceeds maxMachines', async () => {
    const c = cloud('failing', { failCreate: true });
    const cfg = config(c, {}, { maxMachines: 2, gracePeriod: 0 });
    let now = 1_000_000;
    writeFileSync(c.status, JSON.stringify({ status: 'up', machineTypes: { 'x86_64-linux:kvm,big': { runnable: 100 } }, machines: {} }));
    const p = new Provisioner({ config: cfg, backend: new CommandBackend(cfg.backend as never, cfg.tag), readStatus: statusReader(cfg), log: quietLog, now: () => now });
    const creates = (): number => c.calls().filter((l) => l.startsWith('create ')).length;

    const r1 = await p.pass();
    expect(creates()).toBe(2);
    expect(r1.machines.map((m) => m.state)).toEqual(['backoff', 'backoff']);
    expect(r1.machines[0]!.reason).toMatch(/create failed \(attempt 1\): .*quota exceeded for this region/);
    expect(r1.counters.failed).toBe(2);

    // Within the backoff (10 s): nothing asked again, and no third machine instead.
    now += 5_000;
    await p.pass();
    expect(creates()).toBe(2);
    // After it: asked again; the next wait doubles (20 s).
    now += 6_000;
    const r3 = await p.pass();
    expect(creates()).toBe(4);
    expect(r3.machines.map((m) => m.attempts)).toEqual([2, 2]);
    now += 11_000;
    await p.pass();
    expect(creates()).toBe(4);
    now += 10_000;
    await p.pass();
    expect(creates()).toBe(6);
    expect(p.states().size).toBe(2);

    // The quota is lifted: the same two machines are made, not new ones.
    const ok = cloud('failing-fixed');
    writeFileSync(c.scripts.create[0]!, readFileSync(ok.scripts.create[0]!, 'utf8').replaceAll(join(ok.dir), c.dir));
    now += 100_000;
    const r5 = await p.pass();
    expect(r5.machines.map((m) => m.state)).toEqual(['joining', 'joining']);
    expect(readdirSync(join(c.dir, 'cloud')).sort()).toEqual(r5.machines.map((m) => `${m.id}.json`).sort());
    p.close();
  });

  it('adopts machines the backend lists that it has no snapshot of, instead of making more', async () => {
    const c = cloud('adopt');
    const cfg = config(c, {}, { maxMachines: 2 });
    writeFileSync(c.status, JSON.stringify({ status: 'up', machineTypes: { 'x86_64-linux:kvm,big': { runnable: 100 } }, machines: {} }));
    const p1 = new Provisioner({ config: cfg, backend: new CommandBackend(cfg.backend as never, cfg.tag), readStatus: statusReader(cfg), log: quietLog });
    await p1.pass();
    p1.close();
    rmSync(join(c.dir, 'state'), { recursive: true }); // the snapshots lost
    const p2 = new Provisioner({ config: cfg, backend: new CommandBackend(cfg.backend as never, cfg.tag), readStatus: statusReader(cfg), log: quietLog });
    const r = await p2.pass();
    expect(r.machines.map((m) => [m.state, m.reason])).toEqual([
      ['joining', 'found at the backend; adopted'],
      ['joining', 'found at the backend; adopted'],
    ]);
    expect(readdirSync(join(c.dir, 'cloud'))).toHaveLength(2);
    p2.close();
  });

  it('changes nothing while the runner is down', async () => {
    const c = cloud('down');
    const cfg = config(c, {}, { minMachines: 1 });
    writeFileSync(c.status, 'not json');
    const p = new Provisioner({ config: cfg, backend: new CommandBackend(cfg.backend as never, cfg.tag), readStatus: statusReader(cfg), log: quietLog });
    const r = await p.pass();
    expect(r.status).toBe('down');
    expect(c.calls()).toEqual([]);
    p.close();
  });
});

describe('the provisioner status server', () => {
  it('serves the last pass as JSON and metrics as Prometheus text', async () => {
    const c = cloud('http');
    const cfg = config(c, {}, { maxMachines: 2 });
    writeFileSync(c.status, JSON.stringify({ status: 'up', machineTypes: { 'x86_64-linux:kvm,big': { runnable: 12, waitingOnDisabled: 2 } }, machines: {} }));
    const p = new Provisioner({ config: cfg, backend: new CommandBackend(cfg.backend as never, cfg.tag), readStatus: statusReader(cfg), log: quietLog });
    const server = await startStatusServer('127.0.0.1:0', () => p.lastReport);
    try {
      const base = `http://127.0.0.1:${(server.address() as { port: number }).port}`;
      expect(await (await fetch(`${base}/status`)).json()).toEqual({ status: 'starting' });
      await p.pass();
      const status = (await (await fetch(`${base}/status`)).json()) as PassReport;
      // 12 runnable less 2 held by disabled machines: 10, one machine.
      expect(status.types['x86_64-linux:kvm,big']).toEqual({ runnable: 10, wanted: 1, running: 1, existing: 1 });
      expect(status.machines).toEqual([expect.objectContaining({ state: 'joining', reason: 'created; waiting for it to join', attempts: 0 })]);
      const metrics = await (await fetch(`${base}/metrics`)).text();
      expect(metrics).toContain('hydrant_provisioner_machines_created_total 1\n');
      expect(metrics).toContain('hydrant_provisioner_machines_wanted{type="x86_64-linux:kvm,big"} 1\n');
      expect((await fetch(`${base}/nothing`)).status).toBe(404);
    } finally {
      server.close();
      p.close();
    }
  });
});

describe('hydrant provision --once', () => {
  it('runs one pass from the command line and prints its report', async () => {
    const c = cloud('once');
    writeFileSync(c.status, JSON.stringify({ status: 'up', machineTypes: { 'x86_64-linux': { runnable: 25 } }, machines: {} }));
    const file = join(c.dir, 'provision.toml');
    writeFileSync(
      file,
      [
        `stateDir = "${join(c.dir, 'state')}"`,
        `statusCommand = ["cat", "${c.status}"]`,
        '[backend]',
        'type = "command"',
        `create = ["${c.scripts.create[0]}"]`,
        `destroy = ["${c.scripts.destroy[0]}"]`,
        `list = ["${c.scripts.list[0]}"]`,
        '[systemTypes."x86_64-linux"]',
        'maxMachines = 2',
        '',
      ].join('\n'),
    );
    const r = await runCli(['provision', '--config', file, '--once', '--log-level', 'warn']);
    expect(r.code, r.stderr).toBe(0);
    const report = JSON.parse(r.stdout) as PassReport;
    expect(report.types['x86_64-linux']).toEqual({ runnable: 25, wanted: 2, running: 2, existing: 2 });
    expect(readdirSync(join(c.dir, 'cloud')).sort()).toEqual(report.machines.map((m) => `${m.id}.json`).sort());
    // A second pass finds the same two (listed, snapshots restored): nothing new is made.
    const again = JSON.parse((await runCli(['provision', '--config', file, '--once', '--log-level', 'warn'])).stdout) as PassReport;
    expect(again.machines.map((m) => m.id).sort()).toEqual(report.machines.map((m) => m.id).sort());
    expect(readdirSync(join(c.dir, 'cloud'))).toHaveLength(2);
  });
});

describe('stopOnIdle with the command backend', () => {
  it('stops idle machines after the grace period and starts them again before making new ones', async () => {
    const c = cloud('stop');
    const machines = join(c.dir, 'cloud');
    const setState = (op: string, state: string): string[] => {
      const file = join(c.dir, `${op}.sh`);
      writeFileSync(
        file,
        `#!/bin/sh\nset -e\nIN=$(cat)\necho "${op} $IN" >> ${c.dir}/calls\npython3 -c 'import json,sys; d=json.loads(sys.argv[1]); f="${machines}/"+d["id"]+".json"; m=json.load(open(f)); m["state"]="${state}"; open(f,"w").write(json.dumps(m))' "$IN"\n`,
      );
      chmodSync(file, 0o755);
      return [file];
    };
    const cfg = parseProvisionerConfig(
      {
        stateDir: join(c.dir, 'state'),
        statusCommand: ['cat', c.status],
        backend: { type: 'command', ...c.scripts, start: setState('start', 'running'), stop: setState('stop', 'stopped') },
        systemTypes: { 'x86_64-linux': { maxMachines: 2, runnablesPerMachine: 1, stopOnIdle: true, gracePeriod: 30 } },
      },
      'test.toml',
    );
    let now = 1_000_000;
    const status = (runnable: number, busy: readonly string[], idle: readonly string[]): void =>
      writeFileSync(c.status, JSON.stringify({ status: 'up', machineTypes: { 'x86_64-linux': { runnable } }, machines: Object.fromEntries([...busy.map((n) => [n, { currentJobs: 1 }]), ...idle.map((n) => [n, { currentJobs: 0 }])]) }));
    const p = new Provisioner({ config: cfg, backend: new CommandBackend(cfg.backend as never, cfg.tag), readStatus: statusReader(cfg), log: quietLog, now: () => now });
    const cloudState = (): string[] => readdirSync(machines).map((f) => JSON.parse(readFileSync(join(machines, f), 'utf8')).state as string).sort();

    status(5, [], []);
    const r1 = await p.pass();
    const names = r1.machines.map((m) => `root@${m.id}.example`);
    expect(names).toHaveLength(2);
    status(0, [], names);
    await p.pass(); // joined, idle: the grace period starts
    now += 31_000;
    const r3 = await p.pass();
    expect(r3.machines.map((m) => m.state)).toEqual(['stopped', 'stopped']);
    expect(cloudState()).toEqual(['stopped', 'stopped']);
    expect(r3.types['x86_64-linux']).toMatchObject({ running: 0, existing: 2 });

    // Work again: the stopped machines are started, none created.
    status(2, [], []);
    const r4 = await p.pass();
    expect(r4.machines.map((m) => m.state)).toEqual(['joining', 'joining']);
    expect(cloudState()).toEqual(['running', 'running']);
    expect(c.calls().filter((l) => l.startsWith('create '))).toHaveLength(2);
    expect(r4.counters).toMatchObject({ created: 2, stopped: 2, started: 2 });
    p.close();
  });
});
