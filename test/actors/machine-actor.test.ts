import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import fc from 'fast-check';
import { transition } from 'xstate';
import { Dispatcher } from '../../src/actors/dispatcher.ts';
import { MachineActor, type MachineChange } from '../../src/actors/machine-actor.ts';
import { DEFAULT_THRESHOLDS, IDLE_LOAD, type MachineFreeFn } from '../../src/actors/machine-record.ts';
import type { PlatformRecord, StepRecord } from '../../src/actors/model.ts';
import { builderMachine, type BuilderContext, type BuilderEvent } from '../../src/machines/index.ts';

const platform: PlatformRecord = { key: 'x86_64-linux||false', system: 'x86_64-linux', features: [], preferLocal: false };
let nextId = 1;
function step(): StepRecord {
  const id = nextId++;
  return {
    id, drvPath: `/nix/store/${id}.drv`, platform, outputs: [], isCA: false, state: 'runnable',
    deps: [], rdeps: [], builds: [], refs: 1, globalPriority: 0, localPriority: 0, lowestBuildId: id, jobsets: [],
    maxSilent: 0, timeout: 0, tries: 0, retryAt: 0, runnableSince: 0, queueGen: 0, criticalPath: 0, machine: null,
  };
}

/** A dispatcher whose steps follow the step machine by hand; assignments are recorded. */
function dispatcher(machineFreeFn: MachineFreeFn = 'Static', over: { retryInterval?: number; retryBackoff?: number; random?: () => number } = {}) {
  const assigned: StepRecord[] = [];
  const d = new Dispatcher({
    clock: { now: () => Date.now() }, stepSortFn: 'Legacy', machineSortFn: 'SpeedFactorOnly', machineFreeFn,
    // Machine backoff: retryInterval · retryBackoff^(failures − 1) s, so 10 ms after the first failure.
    maxRetries: 2, retryInterval: 0.01, retryBackoff: 2, maxUnsupportedTimeInS: 3600,
    random: () => 0, // no jitter unless a test brings its own draw
    ...over,
    stepEvent: (s, e) => {
      s.state = e === 'DISPATCH' ? 'dispatched' : e === 'TRANSIENT_FAILURE' ? 'retryWait' : e === 'RETRY_DUE' ? 'runnable' : 'failed';
    },
    assign: (s) => assigned.push(s),
    unsupported: () => {},
  });
  return { d, assigned };
}

function machine(graceMs: number, maxJobs = 2): MachineActor {
  return new MachineActor(
    { id: 'm', systems: new Set(['x86_64-linux']), features: new Set(), mandatoryFeatures: new Set(), maxJobs, speedFactor: 1, cpuCount: 4, bogomips: 1, thresholds: DEFAULT_THRESHOLDS },
    { graceMs },
  );
}

interface Observed extends MachineChange {
  before: BuilderContext;
  after: BuilderContext;
}

/** Records every change of the actor with its context before and after. */
function record(m: MachineActor): Observed[] {
  const seen: Observed[] = [];
  let before = m.context;
  m.subscribe((_m, c) => {
    seen.push({ ...c, before, after: m.context });
    before = m.context;
  });
  return seen;
}

/** Each observed change is what the XState definition does with that event in that state and context. */
function expectDefinitionAgrees(seen: readonly Observed[]): void {
  for (const c of seen) {
    const [next] = transition(builderMachine, builderMachine.resolveState({ value: c.from, context: c.before }), c.event);
    expect({ from: c.from, event: c.event.type, to: next.value }).toEqual({ from: c.from, event: c.event.type, to: c.to });
    expect(next.context).toEqual(c.after);
  }
}

const path = (seen: readonly Observed[]) => seen.map((c) => `${c.from} -${c.event.type}-> ${c.to}`);

describe('MachineActor', () => {
  beforeEach(() => vi.useFakeTimers({ now: 1_700_000_000_000 }));
  afterEach(() => vi.useRealTimers());

  it('goes through join, busy, failure backoff, disconnect with grace, reconnect and removal as the definition says', async () => {
    const { d, assigned } = dispatcher();
    const m = machine(60_000);
    const seen = record(m);
    d.addMachine(m);
    m.send({ type: 'JOINED' });
    expect(m.state).toBe('ready');

    // Three steps, two slots: the machine fills in one round and becomes busy once.
    const [a, b, c] = [step(), step(), step()];
    for (const s of [a, b, c]) d.enqueue(s);
    await vi.advanceTimersByTimeAsync(0);
    expect(assigned).toEqual([a, b]);
    expect(m.state).toBe('busy');
    expect(m.jobs).toEqual(new Set([a, b]));
    // Steady state: a slot frees and is refilled in the same round; the actor hears nothing.
    const events = seen.length;
    d.jobEnded(a, m, 'done');
    await vi.advanceTimersByTimeAsync(0);
    expect(assigned).toEqual([a, b, c]);
    expect(m.state).toBe('busy');
    expect(seen.length).toBe(events);

    // A machine fault: disabled for the backoff (10 ms), its own timer re-enables it.
    d.machineFailed(m);
    expect(m.state).toBe('disabled');
    expect(m.consecutiveFailures).toBe(1);
    expect(m.disabledUntil).toBe(Date.now() + 10);
    d.jobEnded(b, m, 'done');
    d.jobEnded(c, m, 'done');
    const waiting = step();
    d.enqueue(waiting);
    await vi.advanceTimersByTimeAsync(9);
    expect(m.state).toBe('disabled');
    expect(assigned).not.toContain(waiting);
    expect(d.pendingTimers).toBe(1); // the actor's backoff
    await vi.advanceTimersByTimeAsync(1);
    expect(assigned.at(-1)).toBe(waiting); // dispatched as soon as the backoff elapsed
    expect(m.state).toBe('ready');
    expect(d.pendingTimers).toBe(0);

    // Disconnected: its job is kept through the grace period, and nothing new goes to it.
    m.send({ type: 'DISCONNECTED' });
    expect(m.state).toBe('unreachable');
    const later = step();
    d.enqueue(later);
    await vi.advanceTimersByTimeAsync(59_999);
    expect(m.state).toBe('unreachable');
    expect(m.jobs).toEqual(new Set([waiting]));
    expect(assigned).not.toContain(later);
    // Back within the grace period: the queued step goes to it at once, which fills it.
    m.send({ type: 'RECONNECTED' });
    await vi.advanceTimersByTimeAsync(0);
    expect(assigned.at(-1)).toBe(later);
    expect(m.state).toBe('busy');
    await vi.advanceTimersByTimeAsync(60_000); // no grace timer is left to fire
    expect(m.state).toBe('busy');

    // A success clears the failure count; removal hands the jobs back.
    d.machineSucceeded(m);
    expect(m.consecutiveFailures).toBe(0);
    expect(d.removeMachine(m)).toEqual([waiting, later]);
    expect(m.state).toBe('gone');
    expect(d.machines.size).toBe(0);
    expect(d.pendingTimers).toBe(0);

    expect(path(seen)).toEqual([
      'joining -JOINED-> ready',
      'ready -FULL-> busy',
      'busy -FAILURES_EXCEEDED-> disabled',
      'disabled -BACKOFF_ELAPSED-> ready',
      'ready -DISCONNECTED-> unreachable',
      'unreachable -RECONNECTED-> ready',
      'ready -FULL-> busy',
      'busy -SUCCEEDED-> busy',
      'busy -REMOVE-> gone',
    ]);
    expectDefinitionAgrees(seen);
    d.close();
  });

  it("is disabled by Hydra's formula: one counted failure per 30 s, count capped at 4, up to 30 s of jitter", async () => {
    let draw = 0;
    const { d } = dispatcher('Static', { retryInterval: 60, retryBackoff: 3, random: () => draw });
    const m = machine(0);
    const seen = record(m);
    d.addMachine(m);
    m.send({ type: 'JOINED' });
    const t0 = Date.now();
    d.machineFailed(m);
    expect(m.state).toBe('disabled');
    expect([m.consecutiveFailures, m.disabledUntil - t0]).toEqual([1, 60_000]);
    // 10 s later: inside the window, not counted; the machine stays disabled until the same time.
    await vi.advanceTimersByTimeAsync(10_000);
    d.machineFailed(m);
    expect([m.consecutiveFailures, m.disabledUntil - t0]).toEqual([1, 60_000]);
    // 31 s after the counted one: counted, 60 · 3 s, with the jitter's draw (0.5 of 30 s).
    draw = 0.5;
    await vi.advanceTimersByTimeAsync(21_000);
    d.machineFailed(m);
    expect([m.consecutiveFailures, m.disabledUntil - Date.now()]).toEqual([2, 180_000 + 15_000]);
    // Counted failures go on up to 4 (60 · 27 s), and stay there; the jitter stays under 30 s.
    draw = 0.999;
    for (const want of [3, 4, 4]) {
      await vi.advanceTimersByTimeAsync(31_000);
      d.machineFailed(m);
      expect(m.consecutiveFailures).toBe(want);
    }
    const left = m.disabledUntil - Date.now();
    expect(left).toBeGreaterThanOrEqual(1_620_000);
    expect(left).toBeLessThan(1_650_000);
    // Re-enabled by its own timer once that time is over; a failure soon after the last counted one is not counted.
    await vi.advanceTimersByTimeAsync(left);
    expect(m.state).toBe('ready');
    d.machineSucceeded(m);
    expect(m.consecutiveFailures).toBe(0);
    d.machineFailed(m); // the first after a success always counts
    expect([m.state, m.consecutiveFailures]).toEqual(['disabled', 1]);
    expectDefinitionAgrees(seen);
    d.close();
  });

  it('is gone once its grace period runs out, and its jobs are handed back', async () => {
    const { d, assigned } = dispatcher();
    const m = machine(1000);
    const seen = record(m);
    // The owner's part (runner-service): once the actor is gone, remove it and retry what it held.
    let handedBack: StepRecord[] | null = null;
    m.subscribe((_m, c) => {
      if (c.to === 'gone') handedBack = d.removeMachine(m, 'GRACE_EXPIRED');
    });
    d.addMachine(m);
    m.send({ type: 'JOINED' });
    const s = step();
    d.enqueue(s);
    await vi.advanceTimersByTimeAsync(0);
    expect(assigned).toEqual([s]);

    m.send({ type: 'DISCONNECTED' });
    await vi.advanceTimersByTimeAsync(999);
    expect(m.state).toBe('unreachable');
    expect(handedBack).toBeNull();
    await vi.advanceTimersByTimeAsync(1);
    expect(m.state).toBe('gone');
    expect(handedBack).toEqual([s]);
    expect(d.machines.size).toBe(0);
    expect(d.pendingTimers).toBe(0);
    // No longer a machine for the platform: a new step waits.
    d.enqueue(step());
    await vi.advanceTimersByTimeAsync(0);
    expect(assigned).toEqual([s]);
    expect(d.waitingReason(step()).kind).toBe('noMachine');

    expect(path(seen)).toEqual(['joining -JOINED-> ready', 'ready -DISCONNECTED-> unreachable', 'unreachable -GRACE_EXPIRED-> gone']);
    expectDefinitionAgrees(seen);
    d.close();
  });

  it('takes its capacity from load reports under the dynamic rule', async () => {
    const { d, assigned } = dispatcher('Dynamic');
    const m = machine(0, 8);
    const seen = record(m);
    d.addMachine(m);
    m.send({ type: 'JOINED' });
    m.send({ type: 'REPORTED', at: Date.now(), load: { ...IDLE_LOAD, cpuPressure: 90 } });
    const s = step();
    d.enqueue(s);
    await vi.advanceTimersByTimeAsync(0);
    expect(assigned).toEqual([]);
    expect(m.state).toBe('busy'); // over its thresholds
    expect(d.waitingReason(s).kind).toBe('machinesFull');
    m.send({ type: 'REPORTED', at: Date.now(), load: IDLE_LOAD });
    await vi.advanceTimersByTimeAsync(0);
    expect(assigned).toEqual([s]);
    expect(m.state).toBe('ready');
    expect(m.context.reportedAt).toBe(Date.now());
    expect(path(seen)).toEqual([
      'joining -JOINED-> ready',
      'ready -REPORTED-> ready',
      'ready -FULL-> busy',
      'busy -REPORTED-> busy',
      'busy -SLOT_FREE-> ready',
    ]);
    expectDefinitionAgrees(seen);
    d.close();
  });
});

describe('MachineActor fast path (FULL / SLOT_FREE from the compiled table)', () => {
  beforeEach(() => vi.useFakeTimers({ now: 1_700_000_000_000 }));
  afterEach(() => vi.useRealTimers());

  const simple = (type: Exclude<BuilderEvent['type'], 'FAILURES_EXCEEDED' | 'REPORTED' | 'SUCCEEDED'>) => fc.constant({ type } as BuilderEvent);
  const anyEvent: fc.Arbitrary<BuilderEvent> = fc.oneof(
    // ready ⇄ busy dominates real runs: weight the fast path's events
    { weight: 6, arbitrary: fc.constantFrom<BuilderEvent>({ type: 'FULL' }, { type: 'SLOT_FREE' }) },
    { weight: 2, arbitrary: simple('JOINED') },
    { weight: 1, arbitrary: fc.record({ type: fc.constant('FAILURES_EXCEEDED' as const), at: fc.integer({ min: 0, max: 200_000 }), policy: fc.constant({ intervalS: 60, factor: 3 }), jitter: fc.double({ min: 0, max: 0.999, noNaN: true }) }) },
    { weight: 1, arbitrary: fc.record({ type: fc.constant('REPORTED' as const), at: fc.integer({ min: 0, max: 10 }), load: fc.constant({ ...IDLE_LOAD, cpuPressure: 50 }) }) },
    { weight: 1, arbitrary: fc.constant<BuilderEvent>({ type: 'SUCCEEDED' }) },
    { weight: 1, arbitrary: fc.constantFrom(...(['BACKOFF_ELAPSED', 'DISCONNECTED', 'RECONNECTED', 'GRACE_EXPIRED', 'DRAIN', 'DRAINED'] as const).map((type) => ({ type }) as BuilderEvent)) },
    { weight: 1, arbitrary: fc.constant<BuilderEvent>({ type: 'REMOVE' }) },
  );

  it("gives the state, the context and the changes heard that XState's transition() gives, on any event sequence", () => {
    fc.assert(
      fc.property(fc.array(anyEvent, { maxLength: 60 }), (events) => {
        const m = machine(1000);
        const heard: string[] = [];
        m.subscribe((_m, c) => heard.push(`${c.from} -${c.event.type}-> ${c.to}`));
        let ref = builderMachine.resolveState({ value: 'joining', context: m.context as BuilderContext });
        const expected: string[] = [];
        for (const e of events) {
          // A gone machine is final: its actor takes no more events (transition() would still apply root-level ones).
          const [next] = ref.status === 'done' ? [ref] : transition(builderMachine, ref, e);
          if (next !== ref) expected.push(`${String(ref.value)} -${e.type}-> ${String(next.value)}`);
          ref = next;
          m.send(e);
          expect(m.state).toBe(ref.value);
          expect(m.context).toEqual(ref.context);
        }
        expect(heard).toEqual(expected);
        m.stop();
      }),
      { numRuns: 300 },
    );
  });

  it('reaches the XState actor before any other event: a backoff armed from busy still fires from the state it was sent in', async () => {
    const m = machine(0);
    const seen = record(m);
    m.send({ type: 'JOINED' });
    m.send({ type: 'FULL' }); // fast path: the actor itself is still in ready
    m.send({ type: 'SLOT_FREE' });
    m.send({ type: 'FULL' });
    expect(m.state).toBe('busy');
    m.send({ type: 'FAILURES_EXCEEDED', at: Date.now(), policy: { intervalS: 0.01, factor: 2 }, jitter: 0 });
    expect(m.state).toBe('disabled');
    await vi.advanceTimersByTimeAsync(10);
    expect(m.state).toBe('ready');
    m.send({ type: 'SLOT_FREE' }); // not accepted in ready: nothing heard
    expect(path(seen)).toEqual([
      'joining -JOINED-> ready',
      'ready -FULL-> busy',
      'busy -SLOT_FREE-> ready',
      'ready -FULL-> busy',
      'busy -FAILURES_EXCEEDED-> disabled',
      'disabled -BACKOFF_ELAPSED-> ready',
    ]);
    expectDefinitionAgrees(seen);
    m.stop();
  });
});
