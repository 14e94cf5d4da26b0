import type { Logger } from '../util/logger.ts';
import type { StepOutput, StepRecord } from './model.ts';

/**
 * The step's derivation was resolved to another one (content-addressed
 * inputs, see docs/CA-DERIVATIONS.md), already written to the store and
 * rooted: the original gets its status-13 row and takes RESOLVE, and the
 * resolved derivation is built in its place.
 */
export interface ResolvedStepPrepared {
  readonly kind: 'resolved';
  /** The resolved .drv. */
  readonly drvPath: string;
  /** The resolved derivation's outputs; paths where known (null: floating). */
  readonly outputs: readonly StepOutput[];
  /** Every output path is known and valid: nothing to build. */
  readonly built: boolean;
  /**
   * A step of the resolved derivation failed for good before (its builds
   * end as a cached failure, as Hydra's Rust runner's PreviousFailure).
   */
  readonly failedBefore?: boolean;
}

/** The step's outputs were built before (known from earlier steps' rows, valid): nothing to build. */
export interface BuiltStepPrepared {
  readonly kind: 'built';
  readonly outputs: readonly { readonly name: string; readonly path: string }[];
}

/**
 * The step's missing outputs were fetched from a binary cache, verified and
 * imported into the runner's store (docs/SUBSTITUTION.md): nothing to build.
 * It ends like a step found built, with Hydra's substitution rows.
 */
export interface SubstitutedStepPrepared {
  readonly kind: 'substituted';
  /** Every output of the step (all valid now). */
  readonly outputs: readonly { readonly name: string; readonly path: string }[];
  /** The outputs that were substituted (the others were valid already). */
  readonly substituted: readonly { readonly name: string; readonly path: string }[];
  /** Unix seconds around the fetching. */
  readonly startTime: number;
  readonly stopTime: number;
}

/**
 * What preparing a runnable step decided: `'dispatch'` (queue the step for a
 * machine as it is), `resolved` (build its resolved derivation instead),
 * `built` (its outputs exist) or `substituted` (its outputs came from a cache).
 */
export type Prepared = 'dispatch' | ResolvedStepPrepared | BuiltStepPrepared | SubstitutedStepPrepared;

/** The outcomes PrepareStep hands to its `apply`. */
export type PreparedWork = Exclude<Prepared, 'dispatch'>;

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
  /** The graph released `step` (e.g. to drop what its preparation kept alive). */
  released?(step: StepRecord): void;
}

export interface PrepareStepOptions {
  /** Without one, every runnable step is queued at once. */
  preparer?: StepPreparer;
  /** Queues a prepared step for dispatch. */
  enqueue(step: StepRecord): void;
  /** Applies a resolution or a step found built (rows, graph); a rejection builds the step as it is. */
  apply(step: StepRecord, r: PreparedWork): Promise<void>;
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
    // A resolution answered synchronously goes the promise's way too.
    this.preparing.add(step);
    void Promise.resolve(r)
      .then((p) => (p !== 'dispatch' && this.preparing.has(step) && !this.closed ? this.o.apply(step, p) : undefined))
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
