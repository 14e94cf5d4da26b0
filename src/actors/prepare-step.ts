import type { Logger } from '../util/logger.ts';
import type { StepRecord } from './model.ts';

/**
 * What preparing a runnable step decided. Today the only answer is
 * `'dispatch'`: queue the step for a machine as it is. Substitution (the
 * outputs fetched from a cache instead of built) and content-addressed
 * resolution (the step built as its resolved derivation) will add their own
 * answers here, each with the graph event and rows it means.
 */
export type Prepared = 'dispatch';

/**
 * The "prepare step" point: work on a step between its becoming runnable in
 * the graph (its dependencies built) and its queueing in the dispatcher.
 * `prepare` answers synchronously when it has nothing to do (no promise on
 * the dispatch path) and with a promise when it must wait, e.g. for a
 * substituter or the realisations of the step's inputs. A rejection is
 * logged and the step is dispatched as it is: building a derivation is
 * always a correct way to get its outputs. A step is prepared once, when it
 * first becomes runnable; its retries go back to the queue directly.
 */
export interface StepPreparer {
  prepare(step: StepRecord): Prepared | Promise<Prepared>;
}

export interface PrepareStepOptions {
  /** Without one, every runnable step is queued at once. */
  preparer?: StepPreparer;
  /** Queues a prepared step for dispatch. */
  enqueue(step: StepRecord): void;
  log: Logger;
}

/**
 * Runs the preparer on each runnable step and keeps the steps it is still
 * working on, which are in the graph but in no dispatcher queue yet: a
 * priority change waits for their queueing, and one released meanwhile is
 * never queued.
 */
export class PrepareStep {
  private readonly preparing = new Set<StepRecord>();
  private closed = false;

  constructor(private readonly o: PrepareStepOptions) {}

  /** The graph announced `step` runnable. */
  runnable(step: StepRecord): void {
    const preparer = this.o.preparer;
    if (preparer === undefined) return this.o.enqueue(step);
    const r = preparer.prepare(step);
    if (r === 'dispatch') return this.o.enqueue(step);
    this.preparing.add(step);
    void r
      .catch((err: unknown) => {
        this.o.log.warn({ drv: step.drvPath, err: String((err as Error)?.message ?? err) }, 'step preparation failed; building it as it is');
      })
      .then(() => {
        if (this.preparing.delete(step) && !this.closed && step.state === 'runnable') this.o.enqueue(step);
      });
  }

  /** Whether `step` is being prepared: not in a dispatcher queue yet. */
  has(step: StepRecord): boolean {
    return this.preparing.size > 0 && this.preparing.has(step);
  }

  /** `step` left the graph; true if it was being prepared (it will not be queued). */
  forget(step: StepRecord): boolean {
    return this.preparing.size > 0 && this.preparing.delete(step);
  }

  /** Stopping: preparations that end from now on queue nothing. */
  close(): void {
    this.closed = true;
  }
}
