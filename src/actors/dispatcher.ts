import { builderLifecycle, type BuilderEventType } from '../machines/index.ts';
import { Heap } from '../util/heap.ts';
import {
  hasRoom, machineScore, supportsPlatform, type MachineFreeFn, type MachineRecord, type MachineSortFn,
} from './machine-record.ts';
import type { Clock, StepRecord } from './model.ts';
import { globalLess, RunnableQueue, type StepSortFn } from './runnable-queue.ts';
import type { StepEventType } from '../machines/index.ts';

export interface DispatcherOptions {
  clock: Clock;
  stepSortFn: StepSortFn;
  machineSortFn: MachineSortFn;
  machineFreeFn: MachineFreeFn;
  maxRetries: number;
  /** Seconds before the first retry; later ones wait retryBackoff times longer each. */
  retryInterval: number;
  retryBackoff: number;
  maxUnsupportedTimeInS: number;
  /** A round every this many seconds even without events (a backstop; <= 0: off). */
  dispatchTriggerTimerInS?: number;
  /** Applies a step lifecycle event (the graph owns step state). */
  stepEvent(step: StepRecord, event: StepEventType): void;
  /** Hands a dispatched step to its machine's builder. */
  assign(step: StepRecord, machine: MachineRecord): void;
  /** A runnable step no machine could run for maxUnsupportedTimeInS. */
  unsupported(step: StepRecord): void;
  /**
   * Called per assignment: `latencyMs` from the moment both the step was
   * runnable and the machine had room to the hand-over (the runner's own
   * delay); `waitMs` from runnable to hand-over (includes waiting for room).
   */
  onDispatch?(latencyMs: number, waitMs: number): void;
}

/** Why a step waits (see Dispatcher.waitingReason); times are epoch milliseconds. */
export type WaitingReason =
  | { kind: 'retryDelay'; until: number; tries: number }
  | { kind: 'noMachine'; system: string; features: string[]; failsAt: number | null }
  | { kind: 'machinesDisabled'; machines: string[]; until: number }
  | { kind: 'machinesUnavailable'; machines: { id: string; state: string }[] }
  | { kind: 'machinesFull'; machines: string[] }
  | { kind: 'queued'; ahead: number; machinesWithRoom: string[] };

export interface DispatcherStats {
  runnable: number;
  retryWaiting: number;
  rounds: number;
  assignments: number;
  /** Time spent in dispatch rounds (the rest of the dispatcher's life is waiting for events). */
  roundMs: number;
}

/**
 * Matches runnable steps to machines. Event-driven: a new runnable step, a
 * freed slot, a joined machine or a due retry schedules one round on the next
 * turn of the event loop, and a round does work in proportion to the
 * assignments it makes (each one: O(platform queues + log n)), never in
 * proportion to the queue. Deadlines (retries, unsupported steps, machine
 * backoff) are data with one timer each for the earliest.
 */
export class Dispatcher {
  private readonly queues = new Map<string, RunnableQueue>();
  private readonly active = new Set<RunnableQueue>();
  readonly machines = new Map<string, MachineRecord>();
  private readonly machineQueues = new Map<MachineRecord, RunnableQueue[]>();
  private readonly retries = new Heap<StepRecord>((a, b) => a.retryAt < b.retryAt);
  private retryTimer: NodeJS.Timeout | null = null;
  private retryTimerAt = 0;
  private unsupportedTimer: NodeJS.Timeout | null = null;
  private readonly backoffTimers = new Map<MachineRecord, NodeJS.Timeout>();
  private scheduled = false;
  private paused = false;
  /** Sees every machine transition while set (the live feed); null costs one check. */
  machineObserver: ((m: MachineRecord, event: BuilderEventType, from: string, to: string) => void) | null = null;
  readonly stats: DispatcherStats = { runnable: 0, retryWaiting: 0, rounds: 0, assignments: 0, roundMs: 0 };

  private readonly o: DispatcherOptions;

  private backstop: NodeJS.Timeout | null = null;

  constructor(options: DispatcherOptions) {
    this.o = { ...options };
    const every = options.dispatchTriggerTimerInS ?? 0;
    if (every > 0) {
      this.backstop = setInterval(() => this.kick(), every * 1000);
      this.backstop.unref();
    }
  }

  /** Applies reloaded settings that are safe to change while running. */
  reconfigure(c: Pick<DispatcherOptions, 'maxRetries' | 'retryInterval' | 'retryBackoff' | 'maxUnsupportedTimeInS' | 'machineFreeFn'>): void {
    Object.assign(this.o, c);
    for (const m of this.machines.values()) this.syncCapacity(m);
  }

  // ------------------------------------------------------------ steps

  enqueue(step: StepRecord): void {
    const q = this.queueFor(step);
    q.push(step);
    this.active.add(q);
    this.stats.runnable++;
    this.checkUnsupported(q);
    this.kick();
  }

  reprioritize(step: StepRecord): void {
    if (step.state !== 'runnable') return;
    this.queues.get(step.platform.key)?.reprioritize(step);
    this.kick();
  }

  /** A step left the queue without being dispatched (cancelled, failed, resolved). */
  forget(step: StepRecord, previous: string): void {
    if (previous === 'runnable') {
      this.queues.get(step.platform.key)?.drop(step);
      this.stats.runnable--;
    } else if (previous === 'retryWait') {
      this.stats.retryWaiting--; // its heap entry is skipped when it comes due
    }
  }

  /**
   * A dispatched or building step ended on `machine`; frees the slot. For a
   * transient failure the step waits and retries, or is abandoned once its
   * retries are used up.
   */
  jobEnded(step: StepRecord, machine: MachineRecord | undefined, outcome: 'done' | 'transient'): 'done' | 'retrying' | 'abandoned' {
    if (machine) this.releaseSlot(step, machine);
    step.machine = null;
    return outcome === 'transient' ? this.retryLater(step) : 'done';
  }

  /**
   * The machine is done with the step (its builder returned the outputs)
   * while the runner still works on it (uploads): the slot goes to another
   * step now. Idempotent; jobEnded releases it too.
   */
  releaseSlot(step: StepRecord, machine: MachineRecord): void {
    if (!machine.jobs.delete(step)) return;
    if (machine.jobs.size === 0) machine.idleSince = this.o.clock.now();
    this.syncCapacity(machine);
  }

  /** Schedules another attempt, or gives up (ABORT) once maxRetries retries were used. */
  private retryLater(step: StepRecord): 'retrying' | 'abandoned' {
    step.tries++;
    if (step.tries > this.o.maxRetries) {
      this.o.stepEvent(step, 'ABORT');
      return 'abandoned';
    }
    this.o.stepEvent(step, 'TRANSIENT_FAILURE');
    const base = this.o.retryInterval * this.o.retryBackoff ** (step.tries - 1);
    const jitter = 0.9 + Math.random() * 0.2; // spread retries of steps that failed together
    step.retryAt = this.o.clock.now() + base * jitter * 1000;
    this.retries.push(step);
    this.stats.retryWaiting++;
    this.armRetryTimer();
    return 'retrying';
  }

  private armRetryTimer(): void {
    let top = this.retries.peek();
    while (top && top.state !== 'retryWait') {
      this.retries.pop();
      top = this.retries.peek();
    }
    if (!top) return;
    if (this.retryTimer && this.retryTimerAt <= top.retryAt) return;
    if (this.retryTimer) clearTimeout(this.retryTimer);
    this.retryTimerAt = top.retryAt;
    this.retryTimer = setTimeout(() => {
      this.retryTimer = null;
      this.retriesDue();
    }, Math.max(0, top.retryAt - this.o.clock.now()));
  }

  private retriesDue(): void {
    const now = this.o.clock.now();
    for (let top = this.retries.peek(); top && top.retryAt <= now; top = this.retries.peek()) {
      this.retries.pop();
      if (top.state !== 'retryWait') continue;
      this.stats.retryWaiting--;
      this.o.stepEvent(top, 'RETRY_DUE');
      top.runnableSince = now;
      this.enqueue(top);
    }
    this.armRetryTimer();
  }

  // ------------------------------------------------------------ inspection

  /**
   * Why a runnable (or retry-waiting) step is not running: what an operator
   * asks when a build sits in the queue. Computed on demand from the
   * machines able to run the step's platform, so it costs nothing otherwise.
   */
  waitingReason(step: StepRecord): WaitingReason {
    if (step.state === 'retryWait') return { kind: 'retryDelay', until: Math.round(step.retryAt), tries: step.tries };
    const q = this.queues.get(step.platform.key);
    const capable = q ? [...q.capable].filter((m) => m.state !== 'gone') : [];
    const p = step.platform;
    if (capable.length === 0) {
      const failsAt = q && q.unsupportedSince > 0 ? Math.round(q.unsupportedSince + this.o.maxUnsupportedTimeInS * 1000) : null;
      return { kind: 'noMachine', system: p.system, features: [...p.features], failsAt };
    }
    const usable = capable.filter((m) => m.state === 'ready' || m.state === 'busy');
    if (usable.length === 0) {
      const disabled = capable.filter((m) => m.state === 'disabled');
      if (disabled.length > 0) return { kind: 'machinesDisabled', machines: disabled.map((m) => m.id), until: Math.min(...disabled.map((m) => m.disabledUntil)) };
      return { kind: 'machinesUnavailable', machines: capable.map((m) => ({ id: m.id, state: m.state })) };
    }
    const withRoom = usable.filter((m) => hasRoom(m, this.o.machineFreeFn));
    if (withRoom.length === 0) return { kind: 'machinesFull', machines: usable.map((m) => m.id) };
    // Capable machines have room: the step is next in line, or behind steps that go first.
    return { kind: 'queued', ahead: q ? q.live - 1 : 0, machinesWithRoom: withRoom.map((m) => m.id) };
  }

  /** Steps waiting for a retry, soonest first (bounded). */
  retryWaiting(limit: number): StepRecord[] {
    const out: StepRecord[] = [];
    for (const s of this.retries) if (s.state === 'retryWait') out.push(s);
    out.sort((a, b) => a.retryAt - b.retryAt);
    return out.slice(0, limit);
  }

  // ------------------------------------------------------------ machines

  /** A builder joined (or re-joined as a new session). */
  addMachine(m: MachineRecord): void {
    this.machines.set(m.id, m);
    this.machineEvent(m, 'JOINED');
    const qs: RunnableQueue[] = [];
    for (const q of this.queues.values()) {
      if (supportsPlatform(m, q.platform)) {
        qs.push(q);
        q.capable.add(m);
        q.unsupportedSince = 0;
      }
    }
    this.machineQueues.set(m, qs);
    this.syncCapacity(m);
    this.listFree(m);
  }

  /** New load/pressure/disk figures from a ping. */
  machineReport(m: MachineRecord): void {
    this.syncCapacity(m);
  }

  /** The connection dropped: keep the machine's jobs for the grace period. */
  machineUnreachable(m: MachineRecord): void {
    this.machineEvent(m, 'DISCONNECTED');
  }

  machineReconnected(m: MachineRecord): void {
    this.machineEvent(m, 'RECONNECTED');
    this.syncCapacity(m);
    this.listFree(m);
  }

  /** The machine is gone for good; returns the steps it still held (the caller retries them). */
  removeMachine(m: MachineRecord, event: 'GRACE_EXPIRED' | 'REMOVE' | 'DRAINED' | 'DISCONNECTED' = 'REMOVE'): StepRecord[] {
    if (builderLifecycle.next(m.state, event)) this.machineEvent(m, event);
    else m.state = 'gone';
    this.machines.delete(m.id);
    const t = this.backoffTimers.get(m);
    if (t) clearTimeout(t);
    this.backoffTimers.delete(m);
    for (const q of this.machineQueues.get(m) ?? []) {
      q.capable.delete(m);
      q.listedFree.delete(m);
      this.checkUnsupported(q);
    }
    this.machineQueues.delete(m);
    return [...m.jobs];
  }

  /** A job failed in a way that points at the machine: disable it for a while. */
  machineFailed(m: MachineRecord): void {
    const now = this.o.clock.now();
    m.consecutiveFailures++;
    m.lastFailure = now;
    const delay = Math.min(this.o.retryInterval * this.o.retryBackoff ** (m.consecutiveFailures - 1), 3600) * 1000;
    m.disabledUntil = now + delay;
    if (builderLifecycle.next(m.state, 'FAILURES_EXCEEDED')) {
      this.machineEvent(m, 'FAILURES_EXCEEDED');
      const prev = this.backoffTimers.get(m);
      if (prev) clearTimeout(prev);
      this.backoffTimers.set(m, setTimeout(() => {
        this.backoffTimers.delete(m);
        if (m.state !== 'disabled') return;
        this.machineEvent(m, 'BACKOFF_ELAPSED');
        this.syncCapacity(m);
        this.listFree(m);
      }, delay));
    }
  }

  machineSucceeded(m: MachineRecord): void {
    m.consecutiveFailures = 0;
  }

  private machineEvent(m: MachineRecord, e: BuilderEventType): void {
    const next = builderLifecycle.next(m.state, e);
    if (next === undefined) throw new Error(`machine ${m.id}: ${e} not accepted in ${m.state}`);
    const from = m.state;
    m.state = next;
    if (this.machineObserver) this.machineObserver(m, e, from, next);
  }

  private syncCapacity(m: MachineRecord): void {
    const room = hasRoom(m, this.o.machineFreeFn);
    if (m.state === 'ready' && !room) this.machineEvent(m, 'FULL');
    else if (m.state === 'busy' && room) {
      this.machineEvent(m, 'SLOT_FREE');
      this.listFree(m);
    }
  }

  private listFree(m: MachineRecord): void {
    if (m.state !== 'ready') return;
    m.roomSince = this.o.clock.now();
    for (const q of this.machineQueues.get(m) ?? []) {
      if (!q.listedFree.has(m)) {
        q.listedFree.add(m);
        q.freeMachines.push(m);
      }
    }
    this.kick();
  }

  private topFree(q: RunnableQueue): MachineRecord | undefined {
    for (let m = q.freeMachines.peek(); m; m = q.freeMachines.peek()) {
      if (m.state === 'ready' && q.listedFree.has(m)) return m;
      q.freeMachines.pop();
      q.listedFree.delete(m);
    }
    return undefined;
  }

  // ------------------------------------------------------------ queues

  private queueFor(step: StepRecord): RunnableQueue {
    let q = this.queues.get(step.platform.key);
    if (!q) {
      q = new RunnableQueue(step.platform, this.o.stepSortFn, (m) => machineScore(m, this.o.machineSortFn));
      this.queues.set(step.platform.key, q);
      for (const [m, qs] of this.machineQueues) {
        if (supportsPlatform(m, q.platform)) {
          qs.push(q);
          q.capable.add(m);
          if (m.state === 'ready') {
            q.listedFree.add(m);
            q.freeMachines.push(m);
          }
        }
      }
    }
    return q;
  }

  private checkUnsupported(q: RunnableQueue): void {
    if (q.capable.size > 0 || q.live === 0) {
      q.unsupportedSince = 0;
      return;
    }
    if (q.unsupportedSince === 0) q.unsupportedSince = this.o.clock.now();
    this.armUnsupportedTimer();
  }

  private armUnsupportedTimer(): void {
    if (this.unsupportedTimer) return;
    let earliest = Infinity;
    for (const q of this.queues.values()) if (q.unsupportedSince > 0) earliest = Math.min(earliest, q.unsupportedSince);
    if (earliest === Infinity) return;
    const due = earliest + this.o.maxUnsupportedTimeInS * 1000;
    this.unsupportedTimer = setTimeout(() => {
      this.unsupportedTimer = null;
      this.unsupportedDue();
    }, Math.max(0, due - this.o.clock.now()));
  }

  private unsupportedDue(): void {
    const now = this.o.clock.now();
    for (const q of this.queues.values()) {
      if (q.unsupportedSince === 0) continue;
      if (q.capable.size > 0) {
        q.unsupportedSince = 0;
        continue;
      }
      if (now - q.unsupportedSince < this.o.maxUnsupportedTimeInS * 1000) continue;
      for (let s = q.pop(); s; s = q.pop()) {
        this.stats.runnable--;
        this.o.unsupported(s);
      }
      q.unsupportedSince = 0;
      this.active.delete(q);
    }
    this.armUnsupportedTimer();
  }

  /**
   * Schedules a round right after the current callback (a microtask): events
   * raised together in one callback share a round, and a freed slot is
   * refilled before the event loop goes on to other I/O.
   */
  private kick(): void {
    if (this.scheduled || this.paused) return;
    this.scheduled = true;
    queueMicrotask(() => this.round());
  }

  /** Stops dispatching (draining); queued steps stay queued. */
  pause(): void {
    this.paused = true;
  }

  resume(): void {
    this.paused = false;
    this.kick();
  }

  /** One dispatch round: assign the globally best step to the best free machine, until none fits. */
  round(): void {
    this.scheduled = false;
    if (this.paused) return;
    this.stats.rounds++;
    const t0 = performance.now();
    try {
      this.assignAll();
    } finally {
      this.stats.roundMs += performance.now() - t0;
    }
  }

  private assignAll(): void {
    for (;;) {
      let bestQ: RunnableQueue | null = null;
      let bestTop: ReturnType<RunnableQueue['peek']> = null;
      for (const q of this.active) {
        if (q.live === 0) {
          this.active.delete(q);
          continue;
        }
        if (!this.topFree(q)) continue;
        const top = q.peek();
        if (!top) continue;
        if (!bestTop || globalLess(top.entry, top.share, bestTop.entry, bestTop.share)) {
          bestQ = q;
          bestTop = top;
        }
      }
      if (!bestQ) return;
      const step = bestQ.pop()!;
      const m = this.topFree(bestQ)!;
      this.stats.runnable--;
      this.dispatchTo(step, m);
    }
  }

  private dispatchTo(step: StepRecord, m: MachineRecord): void {
    this.o.stepEvent(step, 'DISPATCH');
    step.machine = m.id;
    m.jobs.add(step);
    this.stats.assignments++;
    this.syncCapacity(m);
    const now = this.o.clock.now();
    this.o.onDispatch?.(now - Math.max(step.runnableSince, m.roomSince), now - step.runnableSince);
    this.o.assign(step, m);
  }

  /** Queues, for status pages and the visualizer. */
  get platformQueues(): ReadonlyMap<string, RunnableQueue> {
    return this.queues;
  }

  close(): void {
    this.paused = true;
    if (this.backstop) clearInterval(this.backstop);
    this.backstop = null;
    if (this.retryTimer) clearTimeout(this.retryTimer);
    if (this.unsupportedTimer) clearTimeout(this.unsupportedTimer);
    for (const t of this.backoffTimers.values()) clearTimeout(t);
    this.backoffTimers.clear();
    this.retryTimer = null;
    this.unsupportedTimer = null;
  }

  /** Timers still armed (tests check none is left after every build ends). */
  get pendingTimers(): number {
    return (this.retryTimer ? 1 : 0) + (this.unsupportedTimer ? 1 : 0) + this.backoffTimers.size;
  }
}
