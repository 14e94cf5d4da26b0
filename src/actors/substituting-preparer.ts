import type { Logger } from '../util/logger.ts';
import { unixNow } from './builder-port.ts';
import type { Clock, SchedulerStore, StepRecord } from './model.ts';
import type { Prepared, StepPreparer } from './prepare-step.ts';

/** Fetches store paths from caches into the runner's store (src/cache/substituter.ts). */
export interface PathSubstituter {
  /** True when every path is valid afterwards; false when some path is in no cache; throws when a cache's entry is refused. */
  substitute(paths: readonly string[]): Promise<boolean>;
}

/**
 * The runner's store as the only source, for `useSubstitutes = false`: a
 * path it holds counts as fetched, and no substituter is asked. Hydra's C++
 * runner copies outputs valid in its local store to the destination store
 * whatever `useSubstitutes` says (that setting gates only the substituters).
 */
export function localStoreOnly(store: Pick<SchedulerStore, 'queryValid'>): PathSubstituter {
  return {
    substitute: async (paths) => {
      const wanted = new Set(paths);
      return (await store.queryValid([...wanted])).size === wanted.size;
    },
  };
}

export interface SubstitutingPreparerOptions {
  substituter: PathSubstituter;
  /** The preparer for whatever is not substituted (the CA resolver). */
  next: StepPreparer;
  /**
   * What counts as built: valid in the runner's store AND in every cache of
   * remoteStoreAddr (src/cache/cache-valid-store.ts), the scheduler's view.
   */
  valid: Pick<SchedulerStore, 'queryValid'>;
  /**
   * Roots the outputs and puts their closure in every cache (the publisher
   * normal builds use, OutputPublisher.alreadyBuilt); throws when a cache
   * cannot take them. Without it, substituted outputs are only imported.
   */
  publish?: (outputPaths: readonly string[]) => Promise<void>;
  clock: Clock;
  log: Logger;
}

/**
 * The prepare-step chain with `useSubstitutes` (docs/SUBSTITUTION.md): a
 * step whose output paths are all known (input-addressed, fixed-output) is
 * first looked up in the caches; when they all can be fetched it is
 * `substituted`, and everything else (a miss, a refused cache, floating CA
 * steps, which `next` resolves) goes on to the next preparer. A substituted
 * step's outputs are rooted and published with their closure before it
 * counts as substituted, as Hydra's C++ runner copies them to its
 * destination store first; outputs valid in the store but missing from a
 * cache (a runner killed between import and upload) are published the same
 * way (docs/SUBSTITUTION.md, "Publishing").
 */
export class SubstitutingPreparer implements StepPreparer {
  constructor(private readonly o: SubstitutingPreparerOptions) {}

  prepare(step: StepRecord): Prepared | Promise<Prepared> {
    if (step.outputs.length === 0 || step.outputs.some((out) => out.path === null)) return this.o.next.prepare(step);
    return this.trySubstitute(step);
  }

  released(step: StepRecord): void {
    this.o.next.released?.(step);
  }

  private async trySubstitute(step: StepRecord): Promise<Prepared> {
    const outputs = step.outputs.map((out) => ({ name: out.name, path: out.path! }));
    const startTime = unixNow(this.o.clock.now());
    let missing: typeof outputs;
    try {
      // Missing from the store or from a cache: what the store lacks is fetched, then all of it published.
      const before = await this.o.valid.queryValid(outputs.map((o) => o.path));
      missing = outputs.filter((o) => !before.has(o.path));
      if (missing.length === 0) return this.o.next.prepare(step);
      if (!(await this.o.substituter.substitute(missing.map((o) => o.path)))) return this.o.next.prepare(step);
    } catch (err) {
      // One line per refusal: the step is built instead.
      this.o.log.warn({ drv: step.drvPath, err: String((err as Error)?.message ?? err) }, 'substitution refused; building the step');
      return 'dispatch';
    }
    if (!(await this.published(step, outputs))) return 'dispatch';
    return { kind: 'substituted', outputs, substituted: missing, startTime, stopTime: unixNow(this.o.clock.now()) };
  }

  /**
   * Roots the outputs and uploads their closure before any row says they
   * exist: a runner killed before the upload ends finds them missing from a
   * cache after its restart, so the step is not counted built and comes back
   * here. A failure (a cache away, a full disk) builds the step instead, as
   * Hydra's C++ runner does when its copy to the destination store fails;
   * the build's own upload then retries.
   */
  private async published(step: StepRecord, outputs: readonly { name: string; path: string }[]): Promise<boolean> {
    if (!this.o.publish) return true;
    try {
      await this.o.publish(outputs.map((o) => o.path));
      return true;
    } catch (err) {
      this.o.log.error({ drv: step.drvPath, outputs: outputs.map((o) => o.path), err: String((err as Error)?.message ?? err) }, 'cannot publish the substituted outputs; building the step');
      return false;
    }
  }
}
