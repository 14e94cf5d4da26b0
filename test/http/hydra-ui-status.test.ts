import { randomBytes } from 'node:crypto';
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { parseMeminfo, pressureLine } from '../../src/builder/host-metrics.ts';
import { queueRunnerStats } from '../../src/status/queue-runner-stats.ts';
import { runCli } from '../helpers/cli.ts';
import { useInProcessRunner } from '../helpers/in-process-runner.ts';
import { MK_DRV } from '../helpers/nix.ts';
import { waitFor } from '../helpers/runtime.ts';
import { parseMetrics, promtoolCheck } from './prometheus.ts';

type Json = Record<string, any>; // eslint-disable-line @typescript-eslint/no-explicit-any

const PSI_LINES = [
  ['cpuSome', 'cpu', 'some'],
  ['ioSome', 'io', 'some'],
  ['ioFull', 'io', 'full'],
  ['irqFull', 'irq', 'full'],
  ['memSome', 'memory', 'some'],
  ['memFull', 'memory', 'full'],
] as const;

/** What this host's kernel has of a PSI line (the builder runs here). */
function hostPsi(file: string, kind: 'some' | 'full') {
  const path = `/proc/pressure/${file}`;
  return existsSync(path) ? pressureLine(readFileSync(path, 'utf8'), kind) : null;
}

const isNumber = (v: unknown) => typeof v === 'number' && Number.isFinite(v);

/**
 * Hydra's web UI and hydra-send-stats read the queue runner's HTTP API
 * (`queue_runner_endpoint`): every field they read is there, with the type
 * they need, and with the value the Rust runner would give it.
 */
describe("the status Hydra's web UI and hydra-send-stats read", () => {
  const { db, dir, start } = useInProcessRunner('hydra-ui-status');

  it('/status/machines, /status queueRunner and the Rust runner metric names, while a real builder builds', async () => {
    const runner = await start({ builderGraceInS: 0, builderPingTimeoutInS: 5 });
    const api = async (path: string): Promise<Json> => {
      const r = await fetch(`${runner.url}${path}`);
      expect(r.status, path).toBe(200);
      return (await r.json()) as Json;
    };
    runner.builder('b1');
    // The machine's PSI figures come with its first ping.
    await waitFor(async () => (await api('/status/machines')).machines.b1?.stats.pressure != null, 30_000, 'b1 to join and ping');

    const nonce = randomBytes(4).toString('hex');
    const file = join(dir, 'release.nix');
    const submit = async (jobs: string, create: boolean) => {
      writeFileSync(file, `{ }: let ${MK_DRV} in { ${jobs} }`);
      expect((await runCli(['submit', '--db-url', db.url, '--project', 'ui', '--jobset', 'main', ...(create ? ['--create'] : []), '--file', file])).code).toBe(0);
    };
    await submit(`quick = mk { name = "quick-${nonce}"; script = "echo quick > $out"; };`, true);
    await waitFor(async () => (await db.pool.query("select finished from builds where job = 'quick'")).rows[0]?.finished === 1, 60_000, 'quick');
    // slow holds b1's only job slot while the API is read.
    await submit(`slow = mk { name = "slow-${nonce}"; script = "/bin/sleep 60; echo slow > $out"; };`, false);
    await waitFor(async () => (await api('/status/steps')).steps.some((s: Json) => s.busyName === 'building'), 30_000, 'slow to build');

    // ---- /status/machines, as Hydra's Helper/Nix.pm getMachines and root/machine-status.tt read it.
    const { machines } = await api('/status/machines');
    // Keyed by the name the runner writes to BuildSteps.machine (machine-status.tt matches steps to machines by it).
    const stepMachines = (await db.pool.query("select distinct machine from buildsteps where machine <> ''")).rows.map((r) => r.machine as string);
    expect(stepMachines).toEqual(['b1']);
    expect(Object.keys(machines)).toEqual(stepMachines);
    const m = machines.b1;
    // getMachines: systems (the first is the primary type), maxJobs, speedFactor.
    expect(m.systems).toEqual(expect.arrayContaining([expect.any(String)]));
    expect(m.systems.length).toBeGreaterThan(0);
    expect(m.maxJobs).toBe(1);
    expect(isNumber(m.speedFactor)).toBe(true);
    // getMachines dereferences both lists (`@{$machine->{supportedFeatures}}`): arrays, never missing.
    expect(Array.isArray(m.supportedFeatures)).toBe(true);
    expect(Array.isArray(m.mandatoryFeatures)).toBe(true);
    // The UI lists supported then mandatory features: a mandatory one is not in both.
    for (const f of m.mandatoryFeatures) expect(m.supportedFeatures).not.toContain(f);
    // Rust io/machine.rs has_capacity / has_static_capacity / has_dynamic_capacity (machine-status.tt renderYesNo):
    // the one slot is taken, so there is no static capacity, and under the default machineFreeFn (Static) no capacity.
    expect(m).toMatchObject({ hasCapacity: false, hasStaticCapacity: false });
    expect(typeof m.hasDynamicCapacity).toBe('boolean');
    // BogomipsWithSpeedFactor (the default): speedFactor × max(bogomips, 1) × cpuCount (Rust state/machine.rs score).
    expect(m.score).toBeCloseTo(m.speedFactor * Math.max(m.bogomips, 1) * m.cpuCount, 3);
    // memTotal ← totalMem: the builder's MemTotal (it runs on this host).
    expect(m.totalMem).toBe(parseMeminfo(readFileSync('/proc/meminfo', 'utf8')).total);
    const st = m.stats;
    for (const k of ['load1', 'load5', 'load15']) expect(isNumber(st[k]), k).toBe(true);
    // Memory used, shown against memTotal ("… of … used (… free)").
    expect(st.memUsage).toBeGreaterThan(0);
    expect(st.memUsage).toBeLessThan(m.totalMem);
    // "(N steps done, X s/step)": quick is done, slow is not.
    expect(st.nrStepsDone).toBe(1);
    // A count of milliseconds (its value is a duration, not asserted).
    expect(isNumber(st.avgStepBuildTimeMs) && !(st.avgStepBuildTimeMs < 0)).toBe(true);
    // machine-status.tt render_pressure: each line is {avg10, avg60, avg300} in percent, or absent where the kernel has none.
    for (const [key, psiFile, kind] of PSI_LINES) {
      const expected = hostPsi(psiFile, kind);
      if (expected === null) expect(st.pressure[key], key).toBeNull();
      else {
        expect(st.pressure[key], key).toEqual({ avg10: expect.any(Number), avg60: expect.any(Number), avg300: expect.any(Number) });
        for (const a of ['avg10', 'avg60', 'avg300']) {
          expect(st.pressure[key][a]).toBeGreaterThanOrEqual(0);
          expect(st.pressure[key][a]).toBeLessThanOrEqual(100);
        }
      }
    }

    // ---- /status → queueRunner, as hydra-send-stats reads it (it dies on an undefined gauge).
    const status = await api('/status');
    const qr = status.queueRunner;
    expect(qr.status).toBe('up');
    const sendStatsFields = [
      'nrStepsBuilding', 'nrStepsRunnable', 'nrStepsUnfinished', 'nrStepsDone', 'nrRetries', 'nrUnsupportedSteps', 'maxNrRetries',
      'avgStepTimeMs', 'avgStepBuildTimeMs', 'nrBuildsRead', 'nrBuildsUnfinished', 'nrBuildsDone', 'nrQueueWakeups', 'machinesTotal', 'machinesInUse',
    ];
    for (const k of sendStatsFields) expect(isNumber(qr[k]), k).toBe(true);
    // The Rust runner's meanings (state/metrics.rs refresh_dynamic_metrics, state/mod.rs): slow building,
    // nothing waiting for a machine, quick's step done, both builds read, quick's build done.
    expect(qr).toMatchObject({
      nrStepsBuilding: 1, nrStepsRunnable: 0, nrStepsUnfinished: 1, nrStepsDone: 1, nrRetries: 0, nrUnsupportedSteps: 0, maxNrRetries: 0,
      nrBuildsRead: 2, nrBuildsUnfinished: 1, nrBuildsDone: 1, machinesTotal: 1, machinesInUse: 1,
    });
    // One step is done, so the average is of one real duration, not the 0 of none.
    expect(isNumber(qr.avgStepTimeMs) && qr.avgStepTimeMs !== 0).toBe(true);
    // Each submit NOTIFYs builds_added: the monitor woke at least once per submit.
    expect(qr.nrQueueWakeups).toBeGreaterThanOrEqual(2);
    // queueStats.<system>.{totalRunnable, activeRunnable}: Rust queue stats, running steps included in the total.
    const system = m.systems[0] as string;
    expect(qr.queueStats[system]).toEqual({ totalRunnable: 1, activeRunnable: 1 });
    // The same document carries the machines, keyed by name, as the Rust runner's DumpResponse.
    expect(Object.keys(status.machines)).toEqual(['b1']);
    expect(status.machines.b1.hasStaticCapacity).toBe(false);

    // ---- /metrics: the Rust runner's names for the same figures, and promtool accepts it all.
    const text = await (await fetch(`${runner.url}/metrics`)).text();
    expect(await promtoolCheck(text)).toEqual({ code: 0, report: '' });
    const { samples } = parseMetrics(text);
    expect(Object.fromEntries([
      'hydraqueuerunner_steps_building', 'hydraqueuerunner_steps_runnable', 'hydraqueuerunner_steps_unfinished', 'hydraqueuerunner_builds_unfinished',
      'hydraqueuerunner_builds_read', 'hydraqueuerunner_builds_finished', 'hydraqueuerunner_steps_finished', 'hydraqueuerunner_steps_retries',
      'hydraqueuerunner_machines_in_use', 'hydraqueuerunner_queue_build_loads_total',
      `hydraqueuerunner_machine_type_running{machine_type="${system}"}`, `hydraqueuerunner_machine_type_runnable{machine_type="${system}"}`,
      'hydraqueuerunner_machine_current_jobs{hostname="b1"}', 'hydraqueuerunner_machine_steps_done{hostname="b1"}',
    ].map((k) => [k, samples.get(k)]))).toEqual({
      hydraqueuerunner_steps_building: 1, hydraqueuerunner_steps_runnable: 0, hydraqueuerunner_steps_unfinished: 1, hydraqueuerunner_builds_unfinished: 1,
      hydraqueuerunner_builds_read: 2, hydraqueuerunner_builds_finished: 1, hydraqueuerunner_steps_finished: 1, hydraqueuerunner_steps_retries: 0,
      hydraqueuerunner_machines_in_use: 1, hydraqueuerunner_queue_build_loads_total: 2,
      [`hydraqueuerunner_machine_type_running{machine_type="${system}"}`]: 1, [`hydraqueuerunner_machine_type_runnable{machine_type="${system}"}`]: 1,
      'hydraqueuerunner_machine_current_jobs{hostname="b1"}': 1, 'hydraqueuerunner_machine_steps_done{hostname="b1"}': 1,
    });
  }, 180_000);

  it('a runner that does not schedule (standby, starting) is not "up": hydra-send-stats then sends hydra.queue.up 0 and nothing else', () => {
    for (const state of ['standby', 'starting', 'reconnecting']) {
      const qr = queueRunnerStats(null, state, 1_000, 61_500);
      expect(qr).toEqual({ status: state, time: new Date(61_500).toISOString(), uptime: 60.5 });
    }
  });
});
