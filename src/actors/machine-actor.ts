import { createActor, transition, type Actor, type SnapshotFrom } from 'xstate';
import {
  builderLifecycle, builderMachine, BUILDER_STATES, IDLE_LOAD,
  type BuilderContext, type BuilderEvent, type BuilderState, type MachineLoad,
} from '../machines/index.ts';
import { specFields, type MachineRecord, type MachineSpec } from './machine-record.ts';
import type { StepRecord } from './model.ts';

/** One change of a machine actor: a lifecycle transition, or (from === to) a change of its context only. */
export interface MachineChange {
  readonly from: BuilderState;
  readonly event: BuilderEvent;
  readonly to: BuilderState;
}

export type MachineListener = (m: MachineActor, change: MachineChange) => void;

/** What status pages, the metrics and the visualizer read of a machine. */
export interface MachineSnapshot {
  id: string;
  state: BuilderState;
  jobs: number;
  maxJobs: number;
  failures: number;
  lastFailure: number;
  disabledUntil: number;
  load: MachineLoad;
  reportedAt: number;
}

export interface MachineActorOptions {
  /** How long the machine keeps its jobs once unreachable (0: it is gone at once). */
  graceMs?: number;
  load?: MachineLoad;
  /** The set that holds its jobs (a caller's record may bring its own). */
  jobs?: Set<StepRecord>;
  idleSince?: number;
}

/**
 * A build machine as a live actor of `builderMachine`: its lifecycle, health
 * (failures, backoff), reconnect grace and last load report live in the
 * actor and change only through `send(event)`; the backoff and the grace
 * period are the actor's own delayed transitions. Its slots (`jobs`) are
 * plain data the dispatcher fills and empties on the hot path; the
 * dispatcher brings the ready/busy state in line once per round (see
 * README.md in this directory).
 *
 * The latest snapshot's state and context are cached in fields, so reading
 * them costs what reading a record's field does.
 *
 * FULL and SLOT_FREE (ready ⇄ busy) take a fast path: the definition gives
 * them no guard, action, timer or context change (checked below when this
 * module loads), so the next state is read from the compiled table
 * (`builderLifecycle`) and listeners hear the change at once, without the
 * XState actor (an `actor.send` cost 20–50 µs here, on every round that
 * filled or freed a machine). The actor catches up with one FULL or
 * SLOT_FREE, unobserved, before the next other event, so it always decides
 * that event from the state the machine is really in. ready and busy accept
 * the same other events with the same effects, so the catch-up could even be
 * skipped; it is kept so that the actor's own snapshot is never stale.
 */
// The spec's fields are declared once, in MachineSpec, and merged into the class
// (the constructor copies them); a class field list would repeat that interface.
export interface MachineActor extends MachineSpec {}
export class MachineActor implements MachineRecord {
  readonly jobs: Set<StepRecord>;
  idleSince: number;
  roomSince = 0;
  /** Set while the dispatcher has this machine's ready/busy state to sync at the end of the current round. */
  syncPending = false;

  private readonly actor: Actor<typeof builderMachine>;
  private current: SnapshotFrom<typeof builderMachine>;
  private value: BuilderState;
  private ctx: BuilderContext;
  private stopped = false;
  /** Set while the actor replays a fast-path transition (its listeners heard it already). */
  private catchingUp = false;
  /** The named event of the latest microstep (delayed transitions raise BACKOFF_ELAPSED / GRACE_EXPIRED). */
  private lastEvent: BuilderEvent | null = null;
  private readonly listeners = new Set<MachineListener>();

  constructor(spec: MachineSpec, o: MachineActorOptions = {}) {
    Object.assign(this, specFields(spec));
    this.jobs = o.jobs ?? new Set();
    this.idleSince = o.idleSince ?? 0;
    this.actor = createActor(builderMachine, {
      input: { graceMs: o.graceMs ?? 0, load: o.load ?? IDLE_LOAD },
      inspect: (ie) => {
        if (ie.type === '@xstate.microstep' && !ie.event.type.startsWith('xstate.')) this.lastEvent = ie.event as BuilderEvent;
      },
    });
    this.current = this.actor.getSnapshot();
    this.value = this.current.value as BuilderState;
    this.ctx = this.current.context;
    this.actor.subscribe((s) => this.changed(s));
    this.actor.start();
  }

  /** A machine described by a plain record (its spec, jobs set and figures). */
  static from(r: MachineRecord, o: Omit<MachineActorOptions, 'jobs' | 'load' | 'idleSince'> = {}): MachineActor {
    return r instanceof MachineActor ? r : new MachineActor(r, { ...o, jobs: r.jobs, load: r.load, idleSince: r.idleSince });
  }

  get state(): BuilderState {
    return this.value;
  }
  /** The actor's context as of its latest snapshot. */
  get context(): Readonly<BuilderContext> {
    return this.ctx;
  }
  get load(): MachineLoad {
    return this.ctx.load;
  }
  get consecutiveFailures(): number {
    return this.ctx.failures;
  }
  get lastFailure(): number {
    return this.ctx.lastFailure;
  }
  get disabledUntil(): number {
    return this.ctx.disabledUntil;
  }

  /** The only way the machine's lifecycle, health or load changes. Events to a gone or stopped machine are dropped. */
  send(event: BuilderEvent): void {
    if (this.stopped || this.value === 'gone') return;
    if (event.type === 'FULL' || event.type === 'SLOT_FREE') {
      const to = builderLifecycle.next(this.value, event.type);
      if (to === undefined) return; // not accepted: XState would leave the snapshot as it is
      const from = this.value;
      this.value = to;
      this.notify({ from, event, to });
      return;
    }
    this.catchUp();
    this.actor.send(event);
  }

  /** Brings the XState actor to the state the fast path moved the machine to (one event, heard by no listener). */
  private catchUp(): void {
    const inner = this.current.value as BuilderState;
    if (inner === this.value) return;
    this.catchingUp = true;
    try {
      this.actor.send({ type: inner === 'ready' ? 'FULL' : 'SLOT_FREE' });
    } finally {
      this.catchingUp = false;
    }
    if (this.current.value !== this.value) throw new Error(`machine ${this.id}: actor in ${String(this.current.value)}, expected ${this.value}`);
  }

  /** Calls `l` on every change from now on (after the cached state is updated). */
  subscribe(l: MachineListener): () => void {
    this.listeners.add(l);
    return () => this.listeners.delete(l);
  }

  unsubscribe(l: MachineListener): void {
    this.listeners.delete(l);
  }

  get listenerCount(): number {
    return this.listeners.size;
  }

  /** Whether one of the actor's timers (backoff, grace) is armed. */
  get timerArmed(): boolean {
    return !this.stopped && (this.value === 'disabled' || this.value === 'unreachable');
  }

  /** Stops the actor and its timers (the runner is stopping); the machine keeps its last state. */
  stop(): void {
    if (this.stopped) return;
    this.stopped = true;
    this.actor.stop();
  }

  snapshot(): MachineSnapshot {
    const c = this.ctx;
    return {
      id: this.id,
      state: this.value,
      jobs: this.jobs.size,
      maxJobs: this.maxJobs,
      failures: c.failures,
      lastFailure: c.lastFailure,
      disabledUntil: c.disabledUntil,
      load: c.load,
      reportedAt: c.reportedAt,
    };
  }

  private changed(s: SnapshotFrom<typeof builderMachine>): void {
    const prev = this.current;
    if (s === prev) return; // an event the state does not accept
    this.current = s;
    if (this.catchingUp) {
      this.lastEvent = null;
      return;
    }
    const from = this.value;
    this.value = s.value as BuilderState;
    this.ctx = s.context;
    const event = this.lastEvent;
    this.lastEvent = null;
    if (!event || this.stopped) return;
    this.notify({ from, event, to: this.value });
  }

  private notify(change: MachineChange): void {
    for (const l of this.listeners) l(this, change);
  }
}

/**
 * The fast path is exact only for transitions that are a bare change of
 * state: checked once against the definition, for every state that accepts
 * FULL or SLOT_FREE, so a later edit of builder-machine.ts that gives them an
 * action, a guard or a timer fails loudly here instead of being skipped.
 */
function checkFastPath(): void {
  const probe = builderMachine.resolveState({ value: 'joining', context: {} as BuilderContext });
  for (const state of BUILDER_STATES) {
    for (const type of ['FULL', 'SLOT_FREE'] as const) {
      const to = builderLifecycle.next(state, type);
      if (to === undefined) continue;
      const before = builderMachine.resolveState({ value: state, context: probe.context });
      const [after, actions] = transition(builderMachine, before, { type });
      if (after.value !== to || after.context !== before.context || actions.length > 0) {
        throw new Error(`builder machine: ${state} -${type}-> ${to} is not a bare change of state; MachineActor's fast path does not apply`);
      }
    }
  }
}
checkFastPath();
