import { createActor, type Actor, type SnapshotFrom } from 'xstate';
import { builderMachine, IDLE_LOAD, type BuilderContext, type BuilderEvent, type BuilderState, type MachineLoad } from '../machines/index.ts';
import type { MachineRecord, MachineSpec, MachineThresholds } from './machine-record.ts';
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
 */
export class MachineActor implements MachineRecord {
  readonly id: string;
  readonly systems: ReadonlySet<string>;
  readonly features: ReadonlySet<string>;
  readonly mandatoryFeatures: ReadonlySet<string>;
  readonly maxJobs: number;
  readonly speedFactor: number;
  readonly cpuCount: number;
  readonly bogomips: number;
  readonly thresholds: MachineThresholds;
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
  /** The named event of the latest microstep (delayed transitions raise BACKOFF_ELAPSED / GRACE_EXPIRED). */
  private lastEvent: BuilderEvent | null = null;
  private readonly listeners = new Set<MachineListener>();

  constructor(spec: MachineSpec, o: MachineActorOptions = {}) {
    this.id = spec.id;
    this.systems = spec.systems;
    this.features = spec.features;
    this.mandatoryFeatures = spec.mandatoryFeatures;
    this.maxJobs = spec.maxJobs;
    this.speedFactor = spec.speedFactor;
    this.cpuCount = spec.cpuCount;
    this.bogomips = spec.bogomips;
    this.thresholds = spec.thresholds;
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
    this.actor.send(event);
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
    const from = this.value;
    this.value = s.value as BuilderState;
    this.ctx = s.context;
    const event = this.lastEvent;
    this.lastEvent = null;
    if (!event || this.stopped) return;
    const change: MachineChange = { from, event, to: this.value };
    for (const l of this.listeners) l(this, change);
  }
}
