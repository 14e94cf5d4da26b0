import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { Dispatcher, type DispatcherOptions } from '../../src/actors/dispatcher.ts';
import { MachineActor } from '../../src/actors/machine-actor.ts';
import { DEFAULT_THRESHOLDS, IDLE_LOAD, supportsPlatform, type MachineLoad, type MachineSpec } from '../../src/actors/machine-record.ts';
import type { JobsetRecord, PlatformRecord, StepRecord } from '../../src/actors/model.ts';
import { stepLifecycle } from '../../src/machines/index.ts';

function machine(id: string, over: Partial<MachineSpec> & { load?: MachineLoad; graceMs?: number } = {}): MachineActor {
  const { load, graceMs, ...spec } = over;
  return new MachineActor(
    {
      id, systems: new Set(['x86_64-linux']), features: new Set(), mandatoryFeatures: new Set(), maxJobs: 1, speedFactor: 1,
      cpuCount: 1, bogomips: 1, thresholds: DEFAULT_THRESHOLDS, ...spec,
    },
    { load: load ?? IDLE_LOAD, graceMs },
  );
}

/** Adds the machine and joins it, as its owner does. */
function add(d: Dispatcher, m: MachineActor): void {
  d.addMachine(m);
  m.send({ type: 'JOINED' });
}

const platforms = new Map<string, PlatformRecord>();
function platform(system: string, features: string[] = [], preferLocal = false): PlatformRecord {
  const key = `${system}|${features.join(',')}|${preferLocal}`;
  if (!platforms.has(key)) platforms.set(key, { key, system, features, preferLocal });
  return platforms.get(key)!;
}

let nextId = 1;
function step(over: Partial<StepRecord> & { jobsets?: JobsetRecord[] } = {}): StepRecord {
  const id = nextId++;
  return {
    id, drvPath: `/nix/store/${id}.drv`, platform: platform('x86_64-linux'), outputs: [], isCA: false, state: 'runnable',
    deps: [], rdeps: [], builds: [], refs: 1, globalPriority: 0, localPriority: 0, lowestBuildId: id, jobsets: [],
    maxSilent: 0, timeout: 0, tries: 0, retryAt: 0, runnableSince: 0, queueGen: 0, criticalPath: 0, machine: null,
    ...over,
  };
}

function setup(over: Partial<DispatcherOptions> = {}) {
  const assigned: [string, string][] = [];
  const unsupported: StepRecord[] = [];
  const d = new Dispatcher({
    // Date.now is faked (below): the dispatcher's clock and its timers move only when a test says so.
    clock: { now: () => Date.now() }, stepSortFn: 'Legacy', machineSortFn: 'SpeedFactorOnly', machineFreeFn: 'Static',
    maxRetries: 2, retryInterval: 0.01, retryBackoff: 2, maxUnsupportedTimeInS: 0.05,
    random: () => 0, // machine backoffs without jitter
    stepEvent: (s, e) => (s.state = stepLifecycle.next(s.state, e)!),
    assign: (s, m) => assigned.push([s.drvPath, m.id]),
    unsupported: (s) => unsupported.push(s),
    ...over,
  });
  return { d, assigned, unsupported, round: () => d.round() };
}

describe('machine compatibility (Hydra rules)', () => {
  it('checks systems, required and mandatory features, builtin and preferLocalBuild', () => {
    const m = machine('m', { features: new Set(['kvm', 'big', 'local']), mandatoryFeatures: new Set(['big']) });
    expect(supportsPlatform(m, platform('x86_64-linux', ['big']))).toBe(true);
    expect(supportsPlatform(m, platform('x86_64-linux', ['big', 'kvm']))).toBe(true);
    expect(supportsPlatform(m, platform('x86_64-linux'))).toBe(false); // mandatory big not required
    expect(supportsPlatform(m, platform('aarch64-linux', ['big']))).toBe(false);
    expect(supportsPlatform(m, platform('builtin', ['big']))).toBe(true);
    expect(supportsPlatform(m, platform('x86_64-linux', ['big', 'cuda']))).toBe(false);
    const local = machine('l', { features: new Set(['local']), mandatoryFeatures: new Set(['local']) });
    expect(supportsPlatform(local, platform('x86_64-linux', [], true))).toBe(true);
    expect(supportsPlatform(local, platform('x86_64-linux'))).toBe(false);
  });
});

describe('Dispatcher', () => {
  // A controllable clock: Date.now and the timers advance only by vi.advanceTimersByTime, so no test races real sleeps.
  beforeEach(() => vi.useFakeTimers({ now: 1_700_000_000_000 }));
  afterEach(() => vi.useRealTimers());

  it('orders by global priority, then fair share, then local priority, then build id', () => {
    const { d, assigned, round } = setup();
    const heavy: JobsetRecord = { id: 1, project: 'p', name: 'heavy', shares: 100, seconds: 5000, charges: [] };
    const light: JobsetRecord = { id: 2, project: 'p', name: 'light', shares: 100, seconds: 10, charges: [] };
    const steps = [
      step({ drvPath: 'a', jobsets: [heavy], lowestBuildId: 1 }),
      step({ drvPath: 'b', jobsets: [light], lowestBuildId: 9 }),
      step({ drvPath: 'c', jobsets: [heavy], globalPriority: 5, lowestBuildId: 20 }),
      step({ drvPath: 'e', jobsets: [light], localPriority: 3, lowestBuildId: 30 }),
      step({ drvPath: 'f', jobsets: [light], lowestBuildId: 2 }),
    ];
    for (const s of steps) d.enqueue(s);
    const m = machine('m', { maxJobs: 1 });
    add(d, m);
    for (let i = 0; i < steps.length; i++) {
      round();
      const [drv] = assigned[i]!;
      d.jobEnded(steps.find((s) => s.drvPath === drv)!, m, 'done');
    }
    expect(assigned.map(([s]) => s)).toEqual(['c', 'e', 'f', 'b', 'a']);
    d.close();
  });

  it('cuts a long round into slices that go on from later turns of the event loop, in the same order', async () => {
    // A slice of 0 ms: every round stops at its first look at the clock (after 63 assignments).
    const { d, assigned, round } = setup({ roundSliceMs: 0 });
    add(d, machine('m', { maxJobs: 300 }));
    const steps = Array.from({ length: 300 }, (_, i) => step({ drvPath: `s${i}`, globalPriority: (i * 37) % 300 }));
    for (const s of steps) d.enqueue(s);
    round();
    expect(assigned.length).toBe(63);
    expect(d.stats.runnable).toBe(237);
    await vi.runAllTimersAsync(); // the slices that follow
    const byPriority = [...steps].sort((a, b) => b.globalPriority - a.globalPriority).map((s) => s.drvPath);
    expect(assigned.map(([s]) => s)).toEqual(byPriority);
    expect(d.stats.runnable).toBe(0);
    expect(d.stats.rounds).toBeGreaterThanOrEqual(5);
    d.close();
  });

  it('picks the machine with the best score and never exceeds maxJobs', () => {
    const { d, assigned, round } = setup({ machineSortFn: 'CpuCoreCountWithSpeedFactor' });
    add(d, machine('slow', { maxJobs: 2, cpuCount: 2, speedFactor: 1 }));
    add(d, machine('fast', { maxJobs: 2, cpuCount: 8, speedFactor: 1 }));
    for (let i = 0; i < 5; i++) d.enqueue(step());
    round();
    expect(assigned.map(([, m]) => m)).toEqual(['fast', 'fast', 'slow', 'slow']);
    expect(d.stats.runnable).toBe(1);
    d.close();
  });

  it('bumps re-order queued steps', () => {
    const { d, assigned, round } = setup();
    const a = step({ drvPath: 'a', lowestBuildId: 1 });
    const b = step({ drvPath: 'b', lowestBuildId: 2 });
    d.enqueue(a);
    d.enqueue(b);
    b.globalPriority = 100;
    d.reprioritize(b);
    add(d, machine('m'));
    round();
    expect(assigned[0]![0]).toBe('b');
    d.close();
  });

  it('retries transient failures with backoff, then gives up after maxRetries', async () => {
    const { d, assigned } = setup();
    const m = machine('m', { maxJobs: 1 });
    add(d, m);
    const s = step();
    d.enqueue(s);
    await vi.advanceTimersByTimeAsync(0);
    expect(assigned).toHaveLength(1);
    const results: string[] = [];
    for (let i = 1; i <= 3; i++) {
      s.state = 'building';
      results.push(d.jobEnded(s, m, 'transient'));
      if (i === 3) break;
      // Retry i waits retryInterval · retryBackoff^(i-1) = 10, 20 ms, ±10 % jitter: not before, and then at once.
      const base = 10 * 2 ** (i - 1);
      await vi.advanceTimersByTimeAsync(base * 0.9 - 1);
      expect(assigned).toHaveLength(i);
      expect(s.state).toBe('retryWait');
      await vi.advanceTimersByTimeAsync(base * 0.2 + 2);
      expect(assigned).toHaveLength(i + 1);
    }
    expect(results).toEqual(['retrying', 'retrying', 'abandoned']);
    expect(s.state).toBe('failed');
    expect(s.tries).toBe(3);
    expect(d.pendingTimers).toBe(0);
    await vi.advanceTimersByTimeAsync(60_000);
    expect(assigned).toHaveLength(3); // abandoned for good
    d.close();
  });

  it('fails steps no machine supports after maxUnsupportedTimeInS, but not when a capable machine joins in time', async () => {
    const { d, unsupported } = setup();
    const arm = step({ platform: platform('aarch64-linux') });
    const x86 = step();
    d.enqueue(arm);
    d.enqueue(x86);
    await vi.advanceTimersByTimeAsync(20);
    add(d, machine('m')); // x86 only
    await vi.advanceTimersByTimeAsync(29); // 49 ms of the 50 without a capable machine
    expect(unsupported).toEqual([]);
    await vi.advanceTimersByTimeAsync(1);
    expect(unsupported).toEqual([arm]);
    await vi.advanceTimersByTimeAsync(60_000);
    expect(unsupported).toEqual([arm]);
    d.close();
  });

  it('keeps a disconnected machine capable during its grace period', async () => {
    const { d, unsupported, assigned, round } = setup();
    const m = machine('m', { graceMs: 120_000 });
    add(d, m);
    m.send({ type: 'DISCONNECTED' });
    const s = step();
    d.enqueue(s);
    await vi.advanceTimersByTimeAsync(60_000); // far past maxUnsupportedTimeInS
    expect(unsupported).toEqual([]);
    expect(assigned).toEqual([]); // not dispatched to an unreachable machine
    m.send({ type: 'RECONNECTED' });
    round();
    expect(assigned).toEqual([[s.drvPath, 'm']]);
    d.close();
  });

  it('disables a failing machine with backoff and re-enables it', async () => {
    const { d, assigned, round } = setup();
    const m = machine('m');
    add(d, m);
    d.machineFailed(m);
    expect(m.state).toBe('disabled');
    d.enqueue(step());
    round();
    expect(assigned).toEqual([]);
    // The first backoff is retryInterval (10 ms).
    await vi.advanceTimersByTimeAsync(9);
    expect(m.state).toBe('disabled');
    expect(assigned).toEqual([]);
    await vi.advanceTimersByTimeAsync(1);
    // Re-enabled: the queued step went to it at once, which filled it.
    expect(assigned).toHaveLength(1);
    expect(m.state).toBe('busy');
    expect(m.consecutiveFailures).toBe(1);
    d.close();
  });
});
