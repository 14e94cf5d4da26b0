import { stepLifecycle, type StepEventType, type StepState } from '../machines/index.ts';
import { append, JobsetSets, NO_JOBSETS, swapRemove } from './compact.ts';
import type {
  BuildRecord, Clock, FailureCache, JobsetRecord, PlatformRecord, SchedulerStore, StepOutput, StepRecord,
} from './model.ts';

/**
 * The graph of steps that queued builds need, with explicit reference
 * counting. A step is held by each build whose own derivation it is, by each
 * step that depends on it, and briefly by loaders; when its count reaches
 * zero it is released, which releases its own dependencies in turn. Nothing
 * else keeps a step alive, so after every build ends the graph is empty.
 *
 * Every state change goes through the compiled step machine. The graph emits
 * what the dispatcher needs (runnable, reprioritized, released) through a
 * listener and never reaches into the dispatcher itself.
 */
export interface GraphListener {
  runnable(step: StepRecord): void;
  /** A queued or runnable step's priority rose. */
  reprioritized(step: StepRecord): void;
  /** No one holds the step any more; `previous` is its state before cancellation. */
  released(step: StepRecord, previous: StepState): void;
}

export type AddBuildResult =
  | { kind: 'queued'; build: BuildRecord; step: StepRecord }
  | { kind: 'cached'; build: BuildRecord; outputs: readonly StepOutput[] }
  | { kind: 'cachedFailure'; build: BuildRecord; failedDrvPath: string; failedSystem: string; failedOutputs: readonly StepOutput[]; own: boolean; failedStep: StepRecord };

export interface QueuedBuild {
  id: number;
  jobset: JobsetRecord;
  job: string;
  drvPath: string;
  timestamp: number;
  maxSilent: number;
  timeout: number;
  localPriority: number;
  globalPriority: number;
}

export interface StepGraphOptions {
  store: SchedulerStore;
  failures: FailureCache;
  listener: GraphListener;
  clock: Clock;
  /** Maintain criticalPath (costs a downward walk per new link). */
  trackCriticalPath?: boolean;
}

/** Dependents made runnable per turn of the event loop after a step built (see makeReadyRunnable). */
export const RUNNABLE_SLICE = 256;

const SUCCESS_STATES: ReadonlySet<StepState> = new Set(['succeeded', 'failedWithOutput', 'resolved']);

export class StepGraph {
  readonly steps = new Map<string, StepRecord>();
  readonly builds = new Map<number, BuildRecord>();
  private readonly platforms = new Map<string, PlatformRecord>();
  private readonly creating = new Map<string, Promise<StepRecord | null>>();
  /** For a step failed by a dependency: the step that really failed. */
  private readonly failureCause = new WeakMap<StepRecord, StepRecord>();
  private readonly cachedFailures = new WeakSet<StepRecord>();
  private nextId = 1;
  /** Top-level .drv paths being loaded, and the outputs of those found already built. */
  private readonly loadingToplevels = new Map<string, number>();
  private readonly validOutputs = new Map<string, readonly StepOutput[]>();
  private readonly jobsetSets = new JobsetSets();
  /** A resolved step → the step of its resolved derivation. */
  private readonly resolvedTo = new WeakMap<StepRecord, StepRecord>();
  /**
   * Steps that succeeded in memory whose rows are still being written
   * (completeSuccess not yet called): a step created meanwhile waits for
   * them, since a content-addressed output is known to its dependents'
   * preparation only from the committed rows.
   */
  private readonly awaitingRows = new WeakSet<StepRecord>();
  /**
   * The outputs a succeeded step was built to, as its result gave them:
   * a build loaded before the rows are written ends with these, since a
   * floating content-addressed output's path is null in the step itself.
   */
  private readonly builtOutputs = new WeakMap<StepRecord, readonly StepOutput[]>();
  /** Waiting for an awaitingRows step's rows (rowsWritten). */
  private readonly rowWaiters = new WeakMap<StepRecord, (() => void)[]>();

  /** Dependents to make runnable (makeReadyRunnable), from readyHead on, and the turn that goes on with them. */
  private readonly ready: StepRecord[] = [];
  private readyHead = 0;
  private readyLater: NodeJS.Immediate | null = null;

  /** Sees every step transition while set (the live feed); null costs one check on the hot path. */
  observer: ((step: StepRecord, event: StepEventType, from: StepState, to: StepState) => void) | null = null;

  constructor(private readonly o: StepGraphOptions) {}

  /**
   * Applies a lifecycle event; throws if the step machine does not accept it.
   * `outputs`: for a success, the paths the step's outputs have (a build
   * loaded before its rows are written ends with them).
   */
  transition(step: StepRecord, event: StepEventType, outputs?: readonly StepOutput[]): StepState {
    const next = stepLifecycle.next(step.state, event);
    if (next === undefined) throw new Error(`step ${step.drvPath}: ${event} not accepted in ${step.state}`);
    const from = step.state;
    step.state = next;
    if (outputs) this.builtOutputs.set(step, outputs.map((o) => ({ name: o.name, path: o.path })));
    if (event === 'SUCCEED' || event === 'FAIL_WITH_OUTPUT' || event === 'ALREADY_BUILT' || event === 'RESOLVE') this.awaitingRows.add(step);
    if (this.observer) this.observer(step, event, from, next);
    if (next === 'failed' && event !== 'DEP_FAILED') this.failDependents(step);
    return next;
  }

  /**
   * A failed step fails everything waiting on it at once, in memory: a build
   * loaded while the failure is being written then finds a cached failure
   * instead of linking to a step that can never become runnable.
   */
  private failDependents(failed: StepRecord): void {
    const cause = this.causeOf(failed);
    const stack = [...failed.rdeps];
    while (stack.length > 0) {
      const r = stack.pop()!;
      if (r.state !== 'queued') continue; // already failed (or cancelled): its dependents were handled
      this.failureCause.set(r, cause);
      this.transition(r, 'DEP_FAILED');
      for (const rr of r.rdeps) stack.push(rr);
    }
  }

  platform(system: string, features: readonly string[], preferLocal = false): PlatformRecord {
    const sorted = [...new Set(features)].sort();
    const key = `${system}|${sorted.join(',')}${preferLocal ? '|preferLocal' : ''}`;
    let p = this.platforms.get(key);
    if (!p) this.platforms.set(key, (p = Object.freeze({ key, system, features: Object.freeze(sorted), preferLocal })));
    return p;
  }

  /**
   * Loads a queued build: creates the steps it needs (sharing existing ones),
   * or reports that its outputs exist (cached) or that it needs a known
   * failure (cachedFailure).
   */
  async addBuild(q: QueuedBuild): Promise<AddBuildResult> {
    const build: BuildRecord = {
      id: q.id,
      jobset: q.jobset,
      maxSilent: q.maxSilent,
      timeout: q.timeout,
      localPriority: q.localPriority,
      globalPriority: q.globalPriority,
      toplevel: null,
      done: false,
    };
    const d = q.drvPath;
    this.loadingToplevels.set(d, (this.loadingToplevels.get(d) ?? 0) + 1);
    let step: StepRecord | null;
    let outputs: readonly StepOutput[] = [];
    try {
      step = await this.acquire(d);
      outputs = this.validOutputs.get(d) ?? [];
    } finally {
      const n = this.loadingToplevels.get(d)! - 1;
      if (n > 0) this.loadingToplevels.set(d, n);
      else {
        this.loadingToplevels.delete(d);
        this.validOutputs.delete(d);
      }
    }
    if (!step) return { kind: 'cached', build, outputs };
    // A resolved original found alone (its resolved step released while a loader held it) ended as that step did.
    const to = step.state === 'resolved' ? this.resolvedTo.get(step) : undefined;
    if (to?.state === 'failed') {
      const cause = this.failureCause.get(to) ?? to;
      this.releaseHold(step);
      return { kind: 'cachedFailure', build, failedDrvPath: cause.drvPath, failedSystem: cause.platform.system, failedOutputs: cause.outputs, own: cause === to, failedStep: cause };
    }
    if (SUCCESS_STATES.has(step.state)) {
      // Built a moment ago and still held by the builds that wanted it: its
      // rows may not be written yet, so the outputs come from its result.
      this.releaseHold(step);
      return { kind: 'cached', build, outputs: this.outputsOf(step) };
    }
    if (step.state === 'failed') {
      const cause = this.failureCause.get(step) ?? step;
      this.releaseHold(step);
      return { kind: 'cachedFailure', build, failedDrvPath: cause.drvPath, failedSystem: cause.platform.system, failedOutputs: cause.outputs, own: cause === step, failedStep: cause };
    }
    this.builds.set(build.id, build);
    build.toplevel = step;
    step.builds = append(step.builds, build); // the loader's hold becomes the build's
    this.propagate(step, build);
    return { kind: 'queued', build, step };
  }

  /**
   * What a succeeded step's outputs are: its result's. A resolved original
   * still held by a loader after its resolved step was released stands for
   * that step's result.
   */
  private outputsOf(step: StepRecord): readonly StepOutput[] {
    const to = step.state === 'resolved' ? this.resolvedTo.get(step) : undefined;
    return this.builtOutputs.get(step) ?? (to && this.builtOutputs.get(to)) ?? step.outputs;
  }

  /** Drops a build (finished, cancelled or deleted) and releases what only it needed. */
  removeBuild(build: BuildRecord): void {
    build.done = true;
    this.builds.delete(build.id);
    const step = build.toplevel;
    build.toplevel = null;
    if (!step) return;
    const i = step.builds.indexOf(build);
    if (i >= 0) {
      swapRemove(step.builds, i);
      this.releaseHold(step);
    }
  }

  /**
   * After a step built successfully (or with output): its dependents no longer
   * wait for it. Returns the builds whose own step it was.
   */
  completeSuccess(step: StepRecord): BuildRecord[] {
    this.rowsDone(step);
    for (const r of step.rdeps) {
      const i = r.deps.indexOf(step);
      if (i >= 0) swapRemove(r.deps, i);
      if (r.deps.length === 0 && r.state === 'queued') this.ready.push(r);
    }
    this.makeReadyRunnable();
    const holds = step.rdeps.length;
    step.rdeps = [];
    const builds = [...step.builds];
    for (let k = 0; k < holds; k++) this.releaseHold(step);
    return builds;
  }

  /**
   * Dependents whose last dependency built become runnable RUNNABLE_SLICE at
   * a time, the rest from later turns of the event loop: a step many depend
   * on (stdenv) frees ~100k at once, and doing them in one callback held the
   * loop for ~0.4 s before the dispatcher could fill the first free slot.
   * Between slices each waits as `queued` with no dependency left; one
   * cancelled meanwhile is skipped. Hydra's dispatcher also starts on the
   * first ones while the others are still being made runnable.
   */
  private makeReadyRunnable(): void {
    const end = Math.min(this.ready.length, this.readyHead + RUNNABLE_SLICE);
    for (; this.readyHead < end; this.readyHead++) {
      const r = this.ready[this.readyHead]!;
      if (r.deps.length === 0 && r.state === 'queued' && this.steps.get(r.drvPath) === r) this.becomeRunnable(r);
    }
    if (this.readyHead < this.ready.length) {
      this.readyLater ??= setImmediate(() => {
        this.readyLater = null;
        this.makeReadyRunnable();
      });
    } else {
      this.ready.length = 0;
      this.readyHead = 0;
    }
  }

  /** Every unfinished build that needs `step`, directly or through dependents. */
  dependentBuilds(step: StepRecord): BuildRecord[] {
    const seen = new Set<StepRecord>([step]);
    const stack = [step];
    const builds = new Set<BuildRecord>();
    while (stack.length > 0) {
      const s = stack.pop()!;
      for (const b of s.builds) if (!b.done) builds.add(b);
      for (const r of s.rdeps) {
        if (!seen.has(r)) {
          seen.add(r);
          stack.push(r);
        }
      }
    }
    return [...builds].sort((a, b) => a.id - b.id);
  }

  /** Raises a build's global priority (Hydra's bump) and re-propagates it. */
  bump(build: BuildRecord, globalPriority: number): void {
    build.globalPriority = globalPriority;
    if (build.toplevel) this.propagate(build.toplevel, build);
  }

  /** The step a dependency failure traces back to. */
  causeOf(step: StepRecord): StepRecord {
    return this.failureCause.get(step) ?? step;
  }

  isCachedFailure(step: StepRecord): boolean {
    return this.cachedFailures.has(step);
  }

  // ------------------------------------------------------------ resolution

  /**
   * A runnable step resolved to another derivation (content-addressed
   * inputs): the resolved derivation becomes a step like any other (shared
   * when another build resolved to it too), the original takes RESOLVE, and
   * its dependents and the builds whose own step it was move to the resolved
   * step with its priorities. Nothing changes when the answer is not `step`:
   * `gone` (the original was released meanwhile), `built` (the resolved
   * derivation's outputs exist or it has just built: the caller completes
   * the original with them), `failed` (the resolved step failed).
   */
  async resolveTo(original: StepRecord, resolvedDrvPath: string): Promise<{ kind: 'step' | 'failed'; step: StepRecord } | { kind: 'gone' | 'built' }> {
    const resolved = await this.acquire(resolvedDrvPath);
    if (original.state !== 'runnable' || this.steps.get(original.drvPath) !== original) {
      if (resolved) this.releaseHold(resolved);
      return { kind: 'gone' };
    }
    if (!resolved) return { kind: 'built' };
    if (resolved === original) throw new Error(`step ${original.drvPath} resolved to itself`);
    if (SUCCESS_STATES.has(resolved.state) || resolved.state === 'failed') {
      this.releaseHold(resolved);
      if (resolved.state === 'failed') return { kind: 'failed', step: resolved };
      // Just built: the caller reads its outputs from its rows, so they must be written.
      await this.rowsWritten(resolved);
      return { kind: 'built' };
    }
    this.transition(original, 'RESOLVE');
    this.awaitingRows.delete(original); // its dependents move to the resolved step
    this.resolvedTo.set(original, resolved);
    const moved = original.rdeps.length + original.builds.length;
    for (const r of original.rdeps) {
      const i = r.deps.indexOf(original);
      if (i >= 0) r.deps[i] = resolved;
      resolved.rdeps = append(resolved.rdeps, r);
      if (this.o.trackCriticalPath) this.raiseCriticalPath(resolved, r.criticalPath + 1);
    }
    for (const b of original.builds) {
      b.toplevel = resolved;
      resolved.builds = append(resolved.builds, b);
    }
    resolved.refs += moved;
    original.rdeps = [];
    original.builds = [];
    original.refs -= moved;
    // The resolved step carries what the original carried (priorities, limits, jobsets).
    this.spread(resolved, original);
    this.releaseHold(resolved); // the caller's hold
    if (original.refs === 0) {
      original.refs = 1;
      this.releaseHold(original);
    }
    return { kind: 'step', step: resolved };
  }

  /** Resolves once a step that succeeded in memory has its rows written (completeSuccess) or is released. */
  private rowsWritten(step: StepRecord): Promise<void> {
    if (!this.awaitingRows.has(step) || step.refs <= 0) return Promise.resolve();
    return new Promise((resolve) => {
      const list = this.rowWaiters.get(step);
      if (list) list.push(resolve);
      else this.rowWaiters.set(step, [resolve]);
    });
  }

  private rowsDone(step: StepRecord): void {
    this.awaitingRows.delete(step);
    const list = this.rowWaiters.get(step);
    if (!list) return;
    this.rowWaiters.delete(step);
    for (const resolve of list) resolve();
  }

  /** A runnable step fails because `cause` failed (the step it resolved to): a build loaded meanwhile meets `cause`. */
  failAs(step: StepRecord, cause: StepRecord): void {
    this.failureCause.set(step, this.causeOf(cause));
    this.transition(step, 'CACHED_FAILURE');
  }

  /** The step a resolved step was resolved to (while the graph holds it). */
  resolvedStep(step: StepRecord): StepRecord | undefined {
    return this.resolvedTo.get(step);
  }

  // ------------------------------------------------------------ creation

  /** Returns the step for `drvPath` with one hold for the caller, or null if its outputs exist. */
  private async acquire(drvPath: string): Promise<StepRecord | null> {
    let existing = this.steps.get(drvPath);
    // A resolved step still in the graph stands for its resolved derivation.
    if (existing?.state === 'resolved') {
      const r = this.resolvedTo.get(existing);
      if (r && this.steps.get(r.drvPath) === r) existing = r;
    }
    if (existing) {
      existing.refs++;
      return existing;
    }
    let pending = this.creating.get(drvPath);
    if (!pending) {
      pending = this.create(drvPath).finally(() => this.creating.delete(drvPath));
      this.creating.set(drvPath, pending);
    }
    const step = await pending;
    if (step) step.refs++;
    return step;
  }

  private async create(drvPath: string): Promise<StepRecord | null> {
    const drv = await this.o.store.readDerivation(drvPath);
    const known = drv.outputs.filter((o) => o.path !== null).map((o) => o.path!);
    if (known.length === drv.outputs.length) {
      const valid = await this.o.store.queryValid(known);
      if (valid.size === known.length) {
        // Kept only until addBuild picks it up (for a build whose own outputs exist).
        if (this.loadingToplevels.has(drvPath)) this.validOutputs.set(drvPath, drv.outputs);
        return null;
      }
    }
    const step: StepRecord = {
      id: this.nextId++,
      drvPath,
      platform: this.platform(drv.system, drv.requiredFeatures, drv.preferLocalBuild),
      outputs: drv.outputs,
      isCA: drv.isCA,
      isDeterministic: drv.isDeterministic === true,
      state: stepLifecycle.initial,
      deps: [],
      rdeps: [],
      builds: [],
      refs: 0,
      globalPriority: 0,
      localPriority: 0,
      lowestBuildId: Number.MAX_SAFE_INTEGER,
      jobsets: NO_JOBSETS,
      maxSilent: 0,
      timeout: 0,
      tries: 0,
      retryAt: 0,
      runnableSince: 0,
      queueGen: 0,
      criticalPath: 0,
      machine: null,
    };
    // The step is published in `steps` only once created: until then others
    // wait on `creating`, so none links to a step whose dependencies may
    // still turn out to have failed.
    if (known.length > 0 && (await this.o.failures.isFailed(known))) {
      this.cachedFailures.add(step);
      this.transition(step, 'CACHED_FAILURE');
      this.steps.set(drvPath, step);
      return step;
    }
    // Every input is awaited before giving up: one that cannot be loaded must
    // not leave the holds taken on the others behind.
    const settled = await Promise.allSettled([...drv.inputDrvs.keys()].map((d) => this.acquire(d)));
    const failed = settled.find((r): r is PromiseRejectedResult => r.status === 'rejected');
    if (failed) {
      for (const r of settled) if (r.status === 'fulfilled' && r.value) this.releaseHold(r.value);
      throw failed.reason;
    }
    const deps = settled.map((r) => (r as PromiseFulfilledResult<StepRecord | null>).value);
    let failedDep: StepRecord | null = null;
    const linked: StepRecord[] = [];
    for (let dep of deps) {
      if (!dep) continue;
      // Resolved while this step's other inputs loaded (its dependents moved without this one):
      // it stands for its resolved step, not for a success.
      const to = dep.state === 'resolved' ? this.resolvedTo.get(dep) : undefined;
      if (to && this.steps.get(to.drvPath) === to) {
        to.refs++;
        this.releaseHold(dep);
        dep = to;
      }
      if (SUCCESS_STATES.has(dep.state) && !this.awaitingRows.has(dep)) {
        this.releaseHold(dep);
      } else if (dep.state === 'failed' || dep.state === 'cancelled') {
        failedDep ??= dep;
        this.releaseHold(dep);
      } else {
        dep.rdeps = append(dep.rdeps, step); // the hold becomes this step's
        linked.push(dep);
        if (this.o.trackCriticalPath) this.raiseCriticalPath(dep, step.criticalPath + 1);
      }
    }
    step.deps = linked.slice(); // exact size
    this.steps.set(drvPath, step);
    if (failedDep) {
      this.failureCause.set(step, this.causeOf(failedDep));
      this.transition(step, 'DEP_FAILED');
      for (const d of step.deps.splice(0)) {
        swapRemove(d.rdeps, d.rdeps.indexOf(step));
        this.releaseHold(d);
      }
    } else if (step.deps.length === 0) {
      this.becomeRunnable(step);
    }
    return step;
  }

  /**
   * A step is announced to the dispatcher only once a build's priorities
   * have reached it (propagate announces it otherwise): a step still being
   * loaded must not be dispatched without its priority, limits and builds.
   */
  private becomeRunnable(step: StepRecord): void {
    this.transition(step, 'DEPS_DONE');
    if (step.lowestBuildId !== Number.MAX_SAFE_INTEGER) this.announce(step);
  }

  private announce(step: StepRecord): void {
    step.runnableSince = Math.max(1, this.o.clock.now()); // non-zero: announced
    this.o.listener.runnable(step);
  }

  // ------------------------------------------------------------ holds

  /** Drops one hold; at zero the step is released, and so on down its dependencies. */
  releaseHold(first: StepRecord): void {
    const stack = [first];
    while (stack.length > 0) {
      const step = stack.pop()!;
      if (--step.refs > 0) continue;
      if (step.refs < 0) throw new Error(`step ${step.drvPath}: reference count below zero`);
      if (this.steps.get(step.drvPath) === step) this.steps.delete(step.drvPath);
      this.rowsDone(step);
      const previous = step.state;
      if (!stepLifecycle.finals.has(previous)) this.transition(step, 'CANCEL');
      this.o.listener.released(step, previous);
      for (const d of step.deps) {
        const i = d.rdeps.indexOf(step);
        if (i >= 0) swapRemove(d.rdeps, i);
        stack.push(d);
      }
      step.deps = [];
    }
  }

  // ------------------------------------------------------------ priorities

  /**
   * Pushes a build's priorities and limits down its step closure. A step's
   * dependencies always carry at least its own values, so the walk stops
   * wherever nothing would change.
   */
  private propagate(top: StepRecord, build: BuildRecord): void {
    this.spread(top, {
      globalPriority: build.globalPriority,
      localPriority: build.localPriority,
      lowestBuildId: build.id,
      jobsets: [build.jobset],
      maxSilent: build.maxSilent,
      timeout: build.timeout,
    });
  }

  private spread(top: StepRecord, v: Spread): void {
    const stack = [top];
    while (stack.length > 0) {
      const s = stack.pop()!;
      let changed = false;
      if (v.globalPriority > s.globalPriority) (s.globalPriority = v.globalPriority), (changed = true);
      if (v.localPriority > s.localPriority) (s.localPriority = v.localPriority), (changed = true);
      if (v.lowestBuildId < s.lowestBuildId) (s.lowestBuildId = v.lowestBuildId), (changed = true);
      for (const j of v.jobsets) if (!s.jobsets.includes(j)) (s.jobsets = this.jobsetSets.with(s.jobsets, j)), (changed = true);
      if (v.maxSilent > s.maxSilent) (s.maxSilent = v.maxSilent), (changed = true);
      if (v.timeout > s.timeout) (s.timeout = v.timeout), (changed = true);
      if (!changed) continue;
      if (s.state === 'runnable') {
        if (s.runnableSince === 0) this.announce(s);
        else this.o.listener.reprioritized(s);
      }
      for (const d of s.deps) stack.push(d);
    }
  }

  private raiseCriticalPath(first: StepRecord, length: number): void {
    const stack: [StepRecord, number][] = [[first, length]];
    while (stack.length > 0) {
      const [s, l] = stack.pop()!;
      if (s.criticalPath >= l) continue;
      s.criticalPath = l;
      if (s.state === 'runnable') this.o.listener.reprioritized(s);
      for (const d of s.deps) stack.push([d, l + 1]);
    }
  }
}

/** The values a build hands down its closure (a step carries the same fields). */
type Spread = Pick<StepRecord, 'globalPriority' | 'localPriority' | 'lowestBuildId' | 'jobsets' | 'maxSilent' | 'timeout'>;

