import { randomBytes } from 'node:crypto';
import { existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { hostSystem } from '../../src/nix/host-system.ts';
import { startCli } from '../helpers/cli.ts';
import { createTestDatabase, type TestDatabase } from '../helpers/db.ts';
import { buildRow, processesWithArg, startRunner, submit, type CliProcess, type RunnerProcess } from '../helpers/fleet.ts';
import { MK_DRV } from '../helpers/nix.ts';
import { waitFor } from '../helpers/runtime.ts';

/**
 * `hydrant provision` with the local backend against a real `hydrant serve`:
 * the builders it starts are real `hydrant builder` processes with private
 * stores, found by their configuration file in /proc.
 */
describe('hydrant provision, local backend', () => {
  const dbs: TestDatabase[] = [];
  const root = mkdtempSync(join(tmpdir(), 'hydrant-provision-local-'));
  const procs: CliProcess[] = [];
  const stateDirs: string[] = [];

  /** Builder processes the provisioner started from `stateDir`, by machine id. */
  function builderProcesses(stateDir: string): Map<string, number[]> {
    const local = join(stateDir, 'local');
    const out = new Map<string, number[]>();
    if (!existsSync(local)) return out;
    for (const f of readdirSync(local).filter((n) => n.endsWith('.toml'))) {
      const pids = processesWithArg(join(local, f));
      if (pids.length > 0) out.set(f.slice(0, -5), pids);
    }
    return out;
  }

  afterAll(async () => {
    for (const p of procs) p.child.kill('SIGKILL');
    for (const s of stateDirs) for (const pids of builderProcesses(s).values()) for (const pid of pids) process.kill(pid, 'SIGKILL');
    for (const db of dbs) await db.drop();
  });

  /** A runner on a database of its own (one runner holds a database's lock). */
  async function runner(name: string): Promise<{ r: RunnerProcess; http: string; dir: string; db: TestDatabase }> {
    const dir = join(root, name);
    mkdirSync(dir);
    const db = await createTestDatabase();
    dbs.push(db);
    const r = await startRunner(dir, db.url);
    procs.push(r.proc);
    const http = /"port":(\d+),"writes"/.exec(await r.proc.waitFor(/"port":\d+,"writes":\w+,"msg":"HTTP API listening"/, 60_000))![1];
    return { r, http: `http://127.0.0.1:${http}`, dir, db };
  }

  function provisionConfig(dir: string, http: string, r: RunnerProcess, type: string): string {
    const stateDir = join(dir, 'provisioner');
    stateDirs.push(stateDir);
    const file = join(dir, 'provision.toml');
    writeFileSync(
      file,
      [
        `stateDir = "${stateDir}"`,
        `statusUrl = "${http}"`,
        'interval = 1',
        'maxCreatesPerPass = 2',
        'joinTimeout = 120',
        '[backend]',
        'type = "local"',
        `server = "127.0.0.1:${r.port}"`,
        `tokenFile = "${r.tokenFile}"`,
        `[systemTypes."${hostSystem()}"]`,
        type,
        '',
      ].join('\n'),
    );
    return file;
  }

  it('starts the wanted builders (clamped, two a pass), they build everything, idle ones go after the grace period, minMachines stays', async () => {
    const { r, http, dir, db } = await runner('burst');
    const nonce = randomBytes(4).toString('hex');
    const file = join(dir, 'release.nix');
    // The burst: 40 independent steps; 10 per machine wants 4 machines, clamped to 3. The steps build
    // once the test opens their gate, when the third builder has joined: until then the queue wants three
    // however slowly the builders start (2 s sleeps let two builders run it down first on a loaded machine).
    const gate = join(dir, 'three-joined');
    writeFileSync(file, `{ }: let ${MK_DRV} in {\n${Array.from({ length: 40 }, (_, i) => `  j${i} = mk { name = "burst-${i}-${nonce}"; script = "while [ ! -e ${gate} ]; do /bin/sleep 0.1; done; echo ${i} > $out"; };`).join('\n')}\n}`);
    const ids = await submit(db.url, file, 'burst');
    expect(Object.keys(ids)).toHaveLength(40);
    // Two jobs a machine: the burst is built in half the time; how many machines are wanted counts runnable steps only.
    const config = provisionConfig(dir, http, r, 'minMachines = 1\nmaxMachines = 3\nrunnablesPerMachine = 10\ngracePeriod = 2\nmaxJobs = 2');
    const stateDir = join(dir, 'provisioner');
    const prov = startCli(['provision', '--config', config]);
    procs.push(prov);

    // Three builders join the runner (the first pass asks for two: maxCreatesPerPass).
    try {
      await r.proc.waitFor(/"msg":"builder joined"[\s\S]*"msg":"builder joined"[\s\S]*"msg":"builder joined"/, 120_000);
    } finally {
      writeFileSync(gate, '');
    }
    const firstPass = prov.output().split('"msg":"pass done"')[0]!;
    expect(firstPass.match(/"to":"creating"/g)).toHaveLength(2);
    for (const id of Object.values(ids)) await waitFor(async () => (await buildRow(db.pool, id)).finished === 1, 300_000, `build ${id}`);
    for (const id of Object.values(ids)) expect((await buildRow(db.pool, id)).buildstatus).toBe(0);

    // Never more than three were made; once the queue is empty and the grace period over, one stays (minMachines).
    const reported = (): { wanted: number; running: number } | undefined => {
      try {
        return JSON.parse(readFileSync(join(stateDir, 'status.json'), 'utf8')).types[hostSystem()];
      } catch {
        return undefined;
      }
    };
    await waitFor(() => builderProcesses(stateDir).size === 1 && reported()?.running === 1, 120_000, 'idle builders to be destroyed');
    expect(readdirSync(join(stateDir, 'machines'))).toHaveLength(1);
    const made = new Set([...prov.output().matchAll(/"machine":"(hydrant-provisioned-[^"]+)"[^\n]*"to":"creating"/g)].map((m) => m[1]));
    expect(made.size).toBe(3);
    const joinedIds = new Set([...r.proc.output().matchAll(/"machine":"([^"]+)"[^\n]*"msg":"builder joined"/g)].map((m) => m[1]));
    expect([...joinedIds].sort()).toEqual([...made].sort());
    expect(prov.output()).toMatch(/"to":"destroying"[^\n]*"reason":"idle past its grace period"/);
    // The destroyed machines' stores went with them; the kept one's is still there.
    const local = readdirSync(join(stateDir, 'local')).filter((n) => !n.includes('.'));
    expect(local).toEqual([...builderProcesses(stateDir).keys()]);
    expect(reported()).toMatchObject({ wanted: 1, running: 1 });
    prov.child.kill('SIGTERM');
    expect(await prov.exited).toBe(0);
    // Stopping the provisioner leaves its machines running.
    expect(builderProcesses(stateDir).size).toBe(1);
    for (const pids of builderProcesses(stateDir).values()) for (const pid of pids) process.kill(pid, 'SIGKILL');
    r.proc.child.kill('SIGKILL');
  }, 600_000);

  it('SIGKILL while it scales up, then a restart: no builder orphaned or started twice; a builder that dies is replaced', async () => {
    const { r, http, dir, db } = await runner('kill');
    const nonce = randomBytes(4).toString('hex');
    const file = join(dir, 'release.nix');
    writeFileSync(file, `{ }: let ${MK_DRV} in {\n${Array.from({ length: 6 }, (_, i) => `  j${i} = mk { name = "kill-${i}-${nonce}"; script = "/bin/sleep 30; echo ${i} > $out"; };`).join('\n')}\n}`);
    await submit(db.url, file, 'kill');
    const config = provisionConfig(dir, http, r, 'maxMachines = 3\nrunnablesPerMachine = 1\ngracePeriod = 600');
    const stateDir = join(dir, 'provisioner');
    const first = startCli(['provision', '--config', config]);
    procs.push(first);
    await first.waitFor(/"to":"creating"/, 60_000);
    first.child.kill('SIGKILL');
    await first.exited;

    const second = startCli(['provision', '--config', config]);
    procs.push(second);
    await second.waitFor(/machine snapshots restored/, 60_000);
    await waitFor(() => builderProcesses(stateDir).size === 3, 120_000, 'three builders');
    await r.proc.waitFor(/"msg":"builder joined"[\s\S]*"msg":"builder joined"[\s\S]*"msg":"builder joined"/, 120_000);
    // A few more passes: still three machines, each one process.
    await second.waitFor(/"msg":"pass done"[\s\S]*"msg":"pass done"[\s\S]*"msg":"pass done"/, 60_000);
    const procsById = builderProcesses(stateDir);
    expect(procsById.size).toBe(3);
    for (const [id, pids] of procsById) expect(pids, id).toHaveLength(1);
    expect(readdirSync(join(stateDir, 'machines')).sort()).toEqual([...procsById.keys()].map((id) => `${id}.json`).sort());
    expect(readdirSync(join(stateDir, 'local')).filter((n) => n.endsWith('.json')).sort()).toEqual([...procsById.keys()].map((id) => `${id}.json`).sort());

    // A builder that dies behind the provisioner's back is destroyed and replaced.
    const [victim, [victimPid]] = [...procsById][0]!;
    process.kill(victimPid!, 'SIGKILL');
    await second.waitFor(new RegExp(`"machine":"${victim}"[^\\n]*"to":"gone"`), 60_000);
    await waitFor(() => builderProcesses(stateDir).size === 3 && !builderProcesses(stateDir).has(victim), 120_000, 'a replacement builder');
    expect(existsSync(join(stateDir, 'local', victim))).toBe(false);
    expect(existsSync(join(stateDir, 'machines', `${victim}.json`))).toBe(false);

    second.child.kill('SIGTERM');
    expect(await second.exited).toBe(0);
  }, 600_000);
});
