import type { BuilderState } from '../machines/index.ts';
import { Heap } from '../util/heap.ts';
import type { MachineActor, MachineChange, MachineListener } from './machine-actor.ts';
import {
  hasRoom, machineScore, supportsPlatform, type MachineFreeFn, type MachineRecord, type MachineSortFn,
} from './machine-record.ts';
import type { Clock, StepRecord } from './model.ts';
import { globalLess, RunnableQueue, type Entry, type StepSortFn } from './runnable-queue.ts';
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
  /** Hands a dispatched step to its machine's builder (`now`: the clock's time of the assignment). */
  assign(step: StepRecord, machine: MachineRecord, now: number): void;
  /** A runnable step no machine could run for maxUnsupportedTimeInS. */
  unsupported(step: StepRecord): void;
  /**
   * Called per assignment: `latencyMs` from the moment both the step was
   * runnable and the machine had room to the hand-over (the runner's own
   * delay); `waitMs` from runnable to hand-over (includes waiting for room).
   */
  onDispatch?(latencyMs: number, waitMs: number): void;
  /** Draws in [0, 1) for the jitter of machine backoffs (default Math.random). */
  random?: () => number;
  /** How long one round may assign before it yields to the event loop (default ROUND_SLICE_MS). */
  roundSliceMs?: number;
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
 * proportion to the queue. Deadlines (retries, unsupported steps) are data
 * with one timer each for the earliest.
 *
 * Machines are live actors (MachineActor): the dispatcher reads their
 * lifecycle from their snapshots and hears their transitions by
 * subscription (listing a machine that became ready, unlisting one that is
 * gone); it never changes a machine's state itself except to bring ready/busy
 * in line with its slots once per round (see README.md in this directory).
 */
export class Dispatcher {
  private readonly queues = new Map<string, RunnableQueue>();
  /**
   * Queues with steps, in the order they gained them (a queue is in it when
   * its `active` flag is set): an array, walked on every assignment without
   * the iterator objects a Set allocates until the JIT has optimised the loop.
   */
  private readonly active: RunnableQueue[] = [];
  readonly machines = new Map<string, MachineActor>();
  private readonly machineQueues = new Map<MachineRecord, RunnableQueue[]>();
  /** Machines whose slots or figures changed since the last round's end (their ready/busy is synced then). */
  private readonly touched: MachineActor[] = [];
  private readonly onMachineChange: MachineListener = (m, c) => this.machineChanged(m, c);
  /** Listeners on every machine's changes, present and future (the live feed). */
  private readonly machineObservers = new Set<MachineListener>();
  private readonly retries = new Heap<StepRecord>((a, b) => a.retryAt < b.retryAt);
  private retryTimer: NodeJS.Timeout | null = null;
  private retryTimerAt = 0;
  private unsupportedTimer: NodeJS.Timeout | null = null;
  private scheduled = false;
  private paused = false;
  /** A round that used its time slice left work: it goes on from a later turn of the event loop. */
  private continuation: NodeJS.Immediate | null = null;
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
    for (const m of this.machines.values()) this.roomChanged(m, true);
  }

  // ------------------------------------------------------------ steps

  enqueue(step: StepRecord): void {
    const q = this.queueFor(step);
    q.push(step);
    this.activate(q);
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
    const m = machine as MachineActor;
    const wasFull = !hasRoom(m, this.o.machineFreeFn);
    if (!m.jobs.delete(step)) return;
    if (m.jobs.size === 0) m.idleSince = this.o.clock.now();
    // A machine that had room is listed already, and its state is ready or will be at the next round's end.
    if (wasFull) this.roomChanged(m, true);
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

  /**
   * A machine joined (or re-joined as a new session): from now on its
   * transitions list and unlist it; it is dispatched to once it is ready.
   */
  addMachine(m: MachineActor): void {
    this.machines.set(m.id, m);
    const qs: RunnableQueue[] = [];
    for (const q of this.queues.values()) {
      if (supportsPlatform(m, q.platform)) {
        qs.push(q);
        q.capable.add(m);
        q.unsupportedSince = 0;
      }
    }
    this.machineQueues.set(m, qs);
    m.subscribe(this.onMachineChange);
    for (const l of this.machineObservers) m.subscribe(l);
    this.roomChanged(m, true);
  }

  /**
   * The machine is gone for good (or goes now: `event`, else REMOVE, is sent
   * to it); returns the steps it still held (the caller retries them).
   */
  removeMachine(m: MachineActor, event: 'GRACE_EXPIRED' | 'REMOVE' | 'DRAINED' | 'DISCONNECTED' = 'REMOVE'): StepRecord[] {
    m.send({ type: event });
    if (m.state !== 'gone') m.send({ type: 'REMOVE' });
    this.unlist(m);
    this.machines.delete(m.id);
    m.unsubscribe(this.onMachineChange);
    for (const l of this.machineObservers) m.unsubscribe(l);
    m.stop();
    return [...m.jobs];
  }

  /**
   * A job failed in a way that points at the machine: its actor disables it
   * with Hydra's formula (builder-machine.ts: one counted failure per window,
   * count capped at 4, jitter), the same for gRPC builders and SSH machines.
   */
  machineFailed(m: MachineRecord): void {
    (m as MachineActor).send({
      type: 'FAILURES_EXCEEDED',
      at: this.o.clock.now(),
      policy: { intervalS: this.o.retryInterval, factor: this.o.retryBackoff },
      jitter: (this.o.random ?? Math.random)(),
    });
  }

  /** A job ended well: the failure count starts over (an event only when there is one to reset). */
  machineSucceeded(m: MachineRecord): void {
    if (m.consecutiveFailures > 0) (m as MachineActor).send({ type: 'SUCCEEDED' });
  }

  /** Calls `l` on every change of every machine, present and joining later, until the returned function is called. */
  observeMachines(l: MachineListener): () => void {
    this.machineObservers.add(l);
    for (const m of this.machines.values()) m.subscribe(l);
    return () => {
      this.machineObservers.delete(l);
      for (const m of this.machines.values()) m.unsubscribe(l);
    };
  }

  get machineObserverCount(): number {
    return this.machineObservers.size;
  }

  /** A machine actor changed: list it when it can take jobs again, unlist it once gone. */
  private machineChanged(m: MachineActor, c: MachineChange): void {
    // FULL / SLOT_FREE come from this dispatcher's own sync, which already acted on the slots.
    if (c.event.type === 'FULL' || c.event.type === 'SLOT_FREE') return;
    if (c.to === 'gone') this.unlist(m);
    // A new lifecycle state, or new load figures for a machine the last sync found full.
    else if (usable(c.to)) this.roomChanged(m, c.from !== c.to || c.from === 'busy');
  }

  /**
   * The machine's slots or figures changed: list it in its queues when it has
   * room (`fresh`: it had none before, so its room starts now), and sync its
   * ready/busy state at the round's end.
   */
  private roomChanged(m: MachineActor, fresh: boolean): void {
    this.touch(m);
    if (usable(m.state) && hasRoom(m, this.o.machineFreeFn)) this.listFree(m, fresh);
  }

  private unlist(m: MachineActor): void {
    for (const q of this.machineQueues.get(m) ?? []) {
      q.capable.delete(m);
      q.listedFree.delete(m);
      this.checkUnsupported(q);
    }
    this.machineQueues.delete(m);
  }

  private touch(m: MachineActor): void {
    this.markTouched(m);
    if (!this.scheduled) {
      this.scheduled = true;
      queueMicrotask(() => this.round());
    }
  }

  /**
   * Brings each touched machine's ready/busy state in line with its slots:
   * one event per machine whose capacity differs from its state at the end
   * of a round, none for a machine that stayed full.
   */
  private syncTouched(): void {
    const touched = this.touched;
    // Indexed: a machine's event can touch another machine (its listeners run at once), which joins this pass.
    for (let i = 0; i < touched.length; i++) {
      const m = touched[i]!;
      m.syncPending = false;
      const st = m.state;
      if (st !== 'ready' && st !== 'busy') continue;
      const room = hasRoom(m, this.o.machineFreeFn);
      if (st === 'ready' && !room) m.send({ type: 'FULL' });
      else if (st === 'busy' && room) m.send({ type: 'SLOT_FREE' });
    }
    touched.length = 0;
  }

  /** Marks the machine for the round's end sync (a flag on it, not a set: this runs per assignment). */
  private markTouched(m: MachineActor): void {
    if (m.syncPending) return;
    m.syncPending = true;
    this.touched.push(m);
  }

  private listFree(m: MachineActor, fresh: boolean): void {
    if (fresh) m.roomSince = this.o.clock.now();
    const qs = this.machineQueues.get(m);
    // Indexed: this runs for every freed slot.
    for (let i = 0; qs && i < qs.length; i++) {
      const q = qs[i]!;
      if (!q.listedFree.has(m)) {
        q.listedFree.add(m);
        q.freeMachines.push(m);
      }
    }
    this.kick();
  }

  /** The best listed machine of the queue that can take a job now (capacity read from its slots, not its state). */
  private topFree(q: RunnableQueue): MachineRecord | undefined {
    for (let m = q.freeMachines.peek(); m; m = q.freeMachines.peek()) {
      if (usable(m.state) && q.listedFree.has(m) && hasRoom(m, this.o.machineFreeFn)) return m;
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
          if (usable(m.state) && hasRoom(m, this.o.machineFreeFn)) {
            q.listedFree.add(m);
            q.freeMachines.push(m);
          }
        }
      }
    }
    return q;
  }

  private activate(q: RunnableQueue): void {
    if (q.active) return;
    q.active = true;
    this.active.push(q);
  }

  private deactivate(q: RunnableQueue): void {
    if (!q.active) return;
    q.active = false;
    this.active.splice(this.active.indexOf(q), 1); // in order: ties between queues go to the first, as before
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
      this.deactivate(q);
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

  /**
   * One dispatch round: assign the globally best step to the best free
   * machine, until none fits or the round used its slice of time
   * (ROUND_SLICE_MS): then it goes on from a later turn of the event loop,
   * so a burst of thousands of assignments never holds the loop for long
   * and results, pings and other I/O that arrive meanwhile are handled
   * between slices (each in its own round).
   */
  round(): void {
    this.scheduled = false;
    if (this.paused) {
      this.syncTouched();
      return;
    }
    this.stats.rounds++;
    const t0 = performance.now();
    try {
      if (!this.assignAll(t0 + (this.o.roundSliceMs ?? ROUND_SLICE_MS))) this.continueLater();
      this.syncTouched();
    } finally {
      this.stats.roundMs += performance.now() - t0;
    }
  }

  private continueLater(): void {
    if (this.continuation) return;
    this.continuation = setImmediate(() => {
      this.continuation = null;
      this.kick();
    });
  }

  /** Assigns until nothing fits (true) or `deadline` (performance.now()) passes with work left (false). */
  private assignAll(deadline: number): boolean {
    for (let n = 1; ; n++) {
      // The clock is read every 16 assignments (each costs a few µs), and not before a slice holds
      // MIN_SLICE: on a loaded machine a round descheduled mid-way would otherwise yield after a
      // handful, and each slice has its own fixed cost (the machines' sync, a turn of the event loop).
      if (n >= MIN_SLICE && (n & 15) === 0 && performance.now() >= deadline) return false;
      let bestQ: RunnableQueue | null = null;
      let bestTop: Entry | null = null;
      let bestShare = 0;
      let bestM: MachineRecord | undefined;
      const active = this.active;
      for (let i = 0; i < active.length; i++) {
        const q = active[i]!;
        if (q.live === 0) {
          this.deactivate(q);
          i--;
          continue;
        }
        const m = this.topFree(q);
        if (!m) continue;
        const top = q.top();
        if (!top) continue;
        if (!bestTop || globalLess(top, q.topShare, bestTop, bestShare)) {
          bestQ = q;
          bestTop = top;
          bestShare = q.topShare;
          bestM = m;
        }
      }
      if (!bestQ) return true;
      // Nothing ran between the queue's top() and take(): the entry and machine are still its best.
      const step = bestQ.take(bestTop!);
      this.stats.runnable--;
      this.dispatchTo(step, bestM!);
    }
  }

  private dispatchTo(step: StepRecord, m: MachineRecord): void {
    this.o.stepEvent(step, 'DISPATCH');
    step.machine = m.id;
    m.jobs.add(step);
    this.stats.assignments++;
    this.markTouched(m as MachineActor); // synced at the round's end
    const now = this.o.clock.now();
    this.o.onDispatch?.(now - Math.max(step.runnableSince, m.roomSince), now - step.runnableSince);
    this.o.assign(step, m, now);
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
    if (this.continuation) clearImmediate(this.continuation);
    this.continuation = null;
    for (const m of this.machines.values()) m.stop();
    this.retryTimer = null;
    this.unsupportedTimer = null;
  }

  /** Timers still armed, the machine actors' included (tests check none is left after every build ends). */
  get pendingTimers(): number {
    let n = (this.retryTimer ? 1 : 0) + (this.unsupportedTimer ? 1 : 0);
    for (const m of this.machines.values()) if (m.timerArmed) n++;
    return n;
  }
}

/** How long one dispatch round may assign before it yields to the event loop. */
export const ROUND_SLICE_MS = 1;
/** Assignments a round makes before it looks at the clock (a multiple of 16). */
const MIN_SLICE = 64;

/** States in which a machine takes jobs (busy may have room again before the round's end syncs it). */
function usable(s: BuilderState): boolean {
  return s === 'ready' || s === 'busy';
}
