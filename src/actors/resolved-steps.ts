import { outputsReader, unixNow } from './builder-port.ts';
import type { BuildRecord, StepOutput, StepRecord } from './model.ts';
import type { ResolvedStepPrepared, SubstitutedStepPrepared } from './prepare-step.ts';
import type { StepResultsOptions } from './step-results.ts';
import { rowBuild } from './row-build.ts';

/** The same collaborators as StepResults. */
export type ResolvedStepsOptions = StepResultsOptions;

/**
 * The rows of a step resolved to another derivation (docs/CA-DERIVATIONS.md):
 * its status-13 row under the build its rows go under, and, when the
 * resolved derivation's outputs exist already, the builds whose own step it
 * was end as cached with them.
 */
export class ResolvedSteps {
  constructor(private readonly o: ResolvedStepsOptions) {}

  /**
   * Writes the status-13 row (one per build and original derivation: a
   * restart finds the one it wrote before). False when no build needs the
   * step any more (nothing written).
   */
  async resolved(step: StepRecord, r: ResolvedStepPrepared): Promise<boolean> {
    const build = this.rowBuild(step);
    if (!build) return false;
    const { stepnr, inserted } = await this.o.writer.persist(() =>
      this.o.db.stepResolved({
        buildId: build.id,
        drvPath: step.drvPath,
        resolvedDrvPath: r.drvPath,
        system: step.platform.system,
        machine: '',
        time: unixNow(this.o.clock.now()),
        outputs: r.outputs,
      }),
    );
    this.o.log.info({ build: build.id, stepnr, drv: step.drvPath, resolved: r.drvPath, recordedBefore: !inserted }, 'step resolved');
    return true;
  }

  /**
   * The resolved derivation needs no building: its outputs (from `r`, or as
   * its steps recorded them) complete the original, and the builds whose own
   * step it was end as cached.
   */
  async resolvedBuilt(step: StepRecord, r: ResolvedStepPrepared): Promise<void> {
    const { db } = this.o;
    let outputs: readonly StepOutput[] = r.outputs;
    if (outputs.some((o) => o.path === null)) {
      const known = new Map((await db.realisedOutputs([r.drvPath])).map((o) => [o.name, o.path]));
      outputs = outputs.map((o) => ({ name: o.name, path: o.path ?? known.get(o.name) ?? null }));
    }
    await this.complete(step, outputs, 'RESOLVE');
  }

  /**
   * The resolved derivation failed for good before: the original takes
   * CACHED_FAILURE (its dependents fail with it in memory) and every build
   * that needs it ends as a cached failure of the resolved derivation (a
   * status-8 row naming the build it failed under). A build whose own step
   * the original is gets 1, not the 2 of Hydra's Rust runner: the resolved
   * derivation is the build's own derivation with its inputs filled in
   * (docs/CA-DERIVATIONS.md).
   */
  async failedBefore(step: StepRecord, r: ResolvedStepPrepared): Promise<void> {
    const { db, graph, writer } = this.o;
    if (step.state !== 'runnable') return;
    graph.transition(step, 'CACHED_FAILURE');
    const builds = graph.dependentBuilds(step);
    const now = unixNow(this.o.clock.now());
    const list = builds.map((b) => ({ buildId: b.id, failedDrvPath: r.drvPath, system: step.platform.system, own: b.toplevel === step, now, outputs: r.outputs }));
    this.o.log.info({ drv: step.drvPath, resolved: r.drvPath, builds: builds.map((b) => b.id) }, 'resolved derivation failed before; cached failure');
    const ended = list.length === 0 ? [] : await writer.persist(() => db.buildsCachedFailure(list));
    for (const id of ended) {
      this.o.stats.buildEnded(false, true);
      this.o.buildFinished(id);
    }
    for (const b of builds) graph.removeBuild(b);
  }

  /**
   * A step whose outputs were substituted: Hydra's substitution rows (one per
   * substituted output, type 1) under the build its rows go under, then it
   * ends like a step found built (its builds cached, dependents released).
   */
  async substituted(step: StepRecord, r: SubstitutedStepPrepared): Promise<void> {
    if (step.state !== 'runnable') return;
    const build = this.rowBuild(step);
    if (build && r.substituted.length > 0) {
      await this.o.writer.persist(() => this.o.db.stepSubstituted({ buildId: build.id, drvPath: step.drvPath, startTime: r.startTime, stopTime: r.stopTime, outputs: r.substituted }));
    }
    this.o.log.info({ drv: step.drvPath, build: build?.id, paths: r.substituted.map((o) => o.path) }, 'step substituted');
    return this.complete(step, r.outputs, 'ALREADY_BUILT');
  }

  /** A step found built before (ALREADY_BUILT): its builds end as cached with `outputs`, its dependents run. */
  alreadyBuilt(step: StepRecord, outputs: readonly StepOutput[]): Promise<void> {
    return this.complete(step, outputs, 'ALREADY_BUILT');
  }

  private async complete(step: StepRecord, outputs: readonly StepOutput[], event: 'RESOLVE' | 'ALREADY_BUILT'): Promise<void> {
    const { db, graph, writer } = this.o;
    if (step.state !== 'runnable') return;
    graph.transition(step, event, outputs);
    const builds = step.builds.filter((b) => !b.done);
    const now = unixNow(this.o.clock.now());
    // No earlier build of the outputs: they are read (substituted or realised into the runner's store just now), as for a build queued already built.
    const readOutputs = outputsReader(this.o.finisher, outputs, (err) =>
      this.o.log.error({ drv: step.drvPath, err: String((err as Error)?.message ?? err) }, 'cannot read the outputs of a step found built'),
    );
    for (const b of builds) {
      if (await writer.persist(() => db.buildCached({ buildId: b.id, now, outputs, readOutputs }))) {
        this.o.stats.buildEnded(true, true);
        this.o.buildFinished(b.id);
      }
    }
    for (const b of graph.completeSuccess(step)) graph.removeBuild(b);
  }

  /** The build a step's rows go under (src/actors/row-build.ts). */
  private rowBuild(step: StepRecord): BuildRecord | undefined {
    return rowBuild(this.o.graph, step);
  }
}
