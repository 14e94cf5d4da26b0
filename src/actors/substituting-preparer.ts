import type { Logger } from '../util/logger.ts';
import { unixNow } from './builder-port.ts';
import type { Clock, SchedulerStore, StepRecord } from './model.ts';
import type { Prepared, StepPreparer } from './prepare-step.ts';

/** Fetches store paths from caches into the runner's store (src/cache/substituter.ts). */
export interface PathSubstituter {
  /** True when every path is valid afterwards; false when some path is in no cache; throws when a cache's entry is refused. */
  substitute(paths: readonly string[]): Promise<boolean>;
}

export interface SubstitutingPreparerOptions {
  substituter: PathSubstituter;
  /** The preparer for whatever is not substituted (the CA resolver). */
  next: StepPreparer;
  valid: Pick<SchedulerStore, 'queryValid'>;
  clock: Clock;
  log: Logger;
}

/**
 * The prepare-step chain with `useSubstitutes` (docs/SUBSTITUTION.md): a
 * step whose output paths are all known (input-addressed, fixed-output) is
 * first looked up in the caches; when they all can be fetched it is
 * `substituted`, and everything else (a miss, a refused cache, floating CA
 * steps, which `next` resolves) goes on to the next preparer.
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
    try {
      const before = await this.o.valid.queryValid(outputs.map((o) => o.path));
      const missing = outputs.filter((o) => !before.has(o.path));
      if (missing.length === 0) return this.o.next.prepare(step);
      if (await this.o.substituter.substitute(missing.map((o) => o.path))) {
        return { kind: 'substituted', outputs, substituted: missing, startTime, stopTime: unixNow(this.o.clock.now()) };
      }
    } catch (err) {
      // One line per refusal: the step is built instead.
      this.o.log.warn({ drv: step.drvPath, err: String((err as Error)?.message ?? err) }, 'substitution refused; building the step');
      return 'dispatch';
    }
    return this.o.next.prepare(step);
  }
}
