import type { MachineListener } from '../actors/machine-actor.ts';
import type { StepRecord } from '../actors/model.ts';
import type { Scheduler } from '../actors/scheduler.ts';
import { stepLifecycle, type StepState } from '../machines/index.ts';

/** One step transition, as the visualizer shows it. */
export interface TransitionEntry {
  readonly event: string;
  readonly from: string;
  readonly to: string;
  /** Epoch milliseconds. */
  readonly at: number;
}

export interface FeedClient {
  /** Step ids the client watches (a build's steps); null: no step events. */
  readonly steps: ReadonlySet<number> | null;
  send(event: 'steps' | 'machines' | 'resync', data: unknown): void;
}

/** Transitions kept per step: enough for any step's life (retries included), bounded against a loop. */
const HISTORY_LIMIT = 64;
/** Finished steps kept for viewers after they leave the graph. */
const RECENT_LIMIT = 10_000;

/**
 * Step and machine transitions for live viewers. Costs nothing while no one
 * watches: the observer on the step graph and the subscription to every
 * machine actor (through the dispatcher, joining machines included) are set
 * only while a client is subscribed. Machines are sent as their actors'
 * snapshots, after each lifecycle transition. Transitions are coalesced per step (latest state
 * wins) and sent at most every `intervalMs`; a client that falls more than
 * `maxBatch` steps behind in one interval is told to re-read instead. Each
 * step's transitions are kept (bounded) while watched, for its history.
 */
export class LiveFeed {
  private readonly clients = new Set<FeedClient>();
  private readonly pending = new Map<StepRecord, TransitionEntry>();
  private readonly histories = new WeakMap<StepRecord, TransitionEntry[]>();
  /** Steps that finished while watched, oldest first (a step leaves the graph once no build holds it). */
  private readonly recent = new Map<number, StepRecord>();
  private machinesDirty = false;
  private unobserveMachines: (() => void) | null = null;
  /** A machine actor changed; context-only changes (load reports) do not change what the page draws. */
  private readonly machineChanged: MachineListener = (_m, c) => {
    if (c.from === c.to) return;
    this.machinesDirty = true;
    this.arm();
  };
  private timer: NodeJS.Timeout | null = null;
  /** Steps sent since start (for the benchmark and tests). */
  readonly stats = { transitions: 0, flushes: 0, stepEvents: 0 };

  constructor(
    private readonly scheduler: () => Scheduler | null,
    private readonly intervalMs = 250,
    private readonly maxBatch = 5000,
  ) {}

  get watching(): number {
    return this.clients.size;
  }

  subscribe(client: FeedClient): () => void {
    this.clients.add(client);
    if (this.clients.size === 1) this.attach();
    return () => {
      this.clients.delete(client);
      if (this.clients.size === 0) this.detach();
    };
  }

  /** A step that finished while watched, by id. */
  recentStep(id: number): StepRecord | undefined {
    return this.recent.get(id);
  }

  /** A step's recorded transitions (those since someone started watching). */
  history(step: StepRecord): readonly TransitionEntry[] {
    return this.histories.get(step) ?? [];
  }

  private attach(): void {
    const s = this.scheduler();
    if (!s) return;
    s.graph.observer = (step, event, from, to) => this.stepChanged(step, event, from, to);
    this.unobserveMachines = s.dispatcher.observeMachines(this.machineChanged);
  }

  private detach(): void {
    const s = this.scheduler();
    if (s) s.graph.observer = null;
    this.unobserveMachines?.();
    this.unobserveMachines = null;
    this.pending.clear();
    if (this.timer) clearTimeout(this.timer);
    this.timer = null;
  }

  private stepChanged(step: StepRecord, event: string, from: string, to: string): void {
    const e: TransitionEntry = { event, from, to, at: Date.now() };
    this.stats.transitions++;
    let h = this.histories.get(step);
    if (!h) this.histories.set(step, (h = []));
    if (h.length >= HISTORY_LIMIT) h.shift();
    h.push(e);
    if (stepLifecycle.finals.has(to as StepState)) {
      this.recent.delete(step.id);
      this.recent.set(step.id, step);
      if (this.recent.size > RECENT_LIMIT) this.recent.delete(this.recent.keys().next().value!);
    }
    this.pending.set(step, e);
    this.arm();
  }

  private arm(): void {
    if (this.timer) return;
    this.timer = setTimeout(() => this.flush(), this.intervalMs);
    this.timer.unref();
  }

  private flush(): void {
    this.timer = null;
    this.stats.flushes++;
    const changed = [...this.pending];
    this.pending.clear();
    for (const c of this.clients) {
      if (!c.steps || changed.length === 0) continue;
      const mine = changed.filter(([step]) => c.steps!.has(step.id));
      if (mine.length === 0) continue;
      if (mine.length > this.maxBatch) {
        c.send('resync', { reason: `${mine.length} steps changed at once` });
        continue;
      }
      this.stats.stepEvents += mine.length;
      c.send('steps', mine.map(([step, e]) => ({ id: step.id, state: step.state, event: e.event, from: e.from, at: e.at })));
    }
    if (this.machinesDirty) {
      this.machinesDirty = false;
      const s = this.scheduler();
      const machines = s ? [...s.dispatcher.machines.values()].map((m) => m.snapshot()) : [];
      for (const c of this.clients) c.send('machines', machines);
    }
  }
}
