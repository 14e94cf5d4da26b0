import type { BuildProductRow, BuiltOutput, ValidOutputs } from './result-rows.ts';
import type { ResolvedStep } from './resolved-steps.ts';

export type { ResolvedStep } from './resolved-steps.ts';
import type { StepOutput } from './step-rows.ts';

/** A build that needs a derivation whose outputs are in FailedPaths (its own when `own`). */
export interface CachedFailure {
  buildId: number;
  failedDrvPath: string;
  system: string;
  own: boolean;
  now: number;
  /** The failed derivation's outputs: its row's BuildStepOutputs, and how the original failing build is found. */
  outputs: readonly StepOutput[];
}

/**
 * Everything the scheduler reads from and writes to Hydra's database, as
 * whole operations: each write method is one transaction, so a step's
 * result lands entirely or not at all. Implemented over PostgreSQL by
 * ./scheduler-db.ts. It lives in src/db so that the scheduler (src/actors)
 * and its implementation both import it downward.
 */
export interface QueuedBuildRow {
  id: number;
  jobsetId: number;
  project: string;
  jobset: string;
  job: string;
  drvPath: string;
  system: string;
  maxSilent: number;
  timeout: number;
  timestamp: number;
  priority: number;
  globalPriority: number;
}

export interface JobsetRow {
  id: number;
  project: string;
  name: string;
  schedulingShares: number;
  /** Build seconds of the jobset's steps that ended in the last 24 hours. */
  recentSeconds: number;
}

export interface SchedulerDb {
  /** Startup: steps left busy by a previous run become aborted (3). */
  abortLeftovers(now: number): Promise<number>;

  /**
   * After an outage: busy rows other than `live` (this runner's running
   * attempts) become aborted (3). Returns how many.
   */
  abortOrphans(now: number, live: readonly { buildId: number; stepnr: number }[]): Promise<number>;

  /**
   * Step attempts begin (one row each, under their build); returns their
   * stepnrs in order. Starts dispatched together are written in one
   * transaction.
   */
  stepsStarted(
    starts: readonly {
      buildId: number;
      drvPath: string;
      system: string;
      machine: string;
      startTime: number;
      outputs: readonly { name: string; path: string | null }[];
      firstStepOfBuild: boolean;
    }[],
  ): Promise<number[]>;

  stepBusy(buildId: number, stepnr: number, busy: number): Promise<void>;

  /**
   * The step built: its row (inserted when `stepnr` is null: its start could
   * not be recorded), and every build whose own derivation it is. Returns
   * the builds that ended.
   */
  stepSucceeded(a: {
    buildId: number;
    stepnr: number | null;
    drvPath: string;
    system: string;
    machine: string;
    startTime: number;
    stopTime: number;
    overheadMs: number;
    logFile: string;
    outputs: readonly BuiltOutput[];
    /** The outputs' joint closure's NAR sizes, when known (else the per-output closures summed). */
    closureSize?: number;
    failedWithOutput: boolean;
    releaseName: string | null;
    products: readonly BuildProductRow[];
    metrics: readonly { name: string; value: number; unit: string | null }[];
    /** Rounds built and whether they differed (determinism checks); absent: built once. */
    timesBuilt?: number;
    isNonDeterministic?: boolean;
    /** Builds to finish; isCachedBuild for those other than the one the step ran under. */
    builds: readonly { id: number; isCachedBuild: boolean }[];
  }): Promise<number[]>;

  /**
   * Several steps built, in one transaction (each as stepSucceeded, in build
   * id order, their NOTIFYs in one statement): results that arrive together
   * share one commit. Returns each one's ended builds, in order.
   */
  stepsSucceeded(list: readonly Parameters<SchedulerDb['stepSucceeded']>[0][]): Promise<number[][]>;

  /**
   * The step failed for good: its row (inserted when `stepnr` is null: it
   * never ran), every build that needs it, FailedPaths when cacheable.
   */
  stepFailed(a: {
    buildId: number;
    stepnr: number | null;
    drvPath: string;
    system: string;
    machine: string;
    status: number;
    errorMsg: string;
    startTime: number;
    stopTime: number;
    logFile: string;
    /** Rounds built and whether they differed (determinism checks); absent: built once. */
    timesBuilt?: number;
    isNonDeterministic?: boolean;
    builds: readonly { id: number; own: boolean }[];
    cacheablePaths: readonly string[];
    /** The step's outputs, for the propagated rows' BuildStepOutputs. */
    outputs: readonly StepOutput[];
  }): Promise<number[]>;

  /**
   * Builds that came to need an already failed step while its failure was
   * being written: they end too (2, or the step's status for their own
   * derivation), with a propagated step row.
   */
  dependentsFailed(a: {
    failedBuildId: number;
    drvPath: string;
    system: string;
    status: number;
    errorMsg: string | null;
    machine: string;
    stopTime: number;
    builds: readonly { id: number; own: boolean }[];
    outputs: readonly StepOutput[];
  }): Promise<number[]>;

  /** A running attempt ended without a result: 3 aborted (retryable) or 4 cancelled. */
  stepAborted(a: { buildId: number; stepnr: number; status: 3 | 4; errorMsg: string | null; startTime: number; stopTime: number; machine: string }): Promise<void>;

  /**
   * All outputs already exist. Status, sizes, release name, products and
   * metrics are copied from the latest build of the same outputs; when no
   * build has them, from `readOutputs` (the outputs read where they are
   * valid; null when they cannot be read: those columns stay as they are).
   */
  buildCached(a: { buildId: number; now: number; outputs: readonly { name: string; path: string | null }[]; readOutputs?: () => Promise<ValidOutputs | null> }): Promise<boolean>;

  /** The build needs a path in FailedPaths (its own when `own`). */
  buildCachedFailure(a: CachedFailure): Promise<boolean>;

  /**
   * A queued build whose derivation cannot be loaded, for a permanent cause:
   * it ends aborted (3) with a step row carrying `errorMsg`. False when it
   * had already ended.
   */
  buildUnloadable(a: { buildId: number; drvPath: string; system: string; errorMsg: string; now: number }): Promise<boolean>;

  /**
   * buildCachedFailure for many builds in one transaction (loaders meeting a
   * failed step together). Returns the ids that ended.
   */
  buildsCachedFailure(list: readonly CachedFailure[]): Promise<number[]>;

  /**
   * A step resolved to another derivation (content-addressed inputs): its
   * status-13 row, in one transaction, unless the build already has one for
   * this derivation (then its stepnr, inserted false).
   */
  stepResolved(a: ResolvedStep): Promise<{ stepnr: number; inserted: boolean }>;

  /**
   * A step whose outputs were substituted from a cache: as Hydra's C++ runner
   * (`createSubstitutionStep`), one finished row per output under the build,
   * type 1 (substitution), status 0, busy 0, with the output's name and path.
   */
  stepSubstituted(a: { buildId: number; drvPath: string; startTime: number; stopTime: number; outputs: readonly { name: string; path: string }[] }): Promise<void>;

  /** The realised output paths of built derivations, as their steps recorded them. */
  realisedOutputs(drvPaths: readonly string[]): Promise<{ drvPath: string; name: string; path: string }[]>;

  /** A resolved derivation's newest permanent failure (its step's status and build), or null: its builds end as a cached failure. */
  failedBefore(drvPath: string): Promise<{ build: number; status: number } | null>;

  jobsets(windowSeconds: number): Promise<JobsetRow[]>;
  /** Unfinished builds with id > afterId, by id, in batches. */
  queuedBuilds(afterId: number): AsyncIterable<QueuedBuildRow[]>;
  /** id → globalPriority of every unfinished build. */
  queuedIds(): Promise<Map<number, number>>;
  buildsByIds(ids: readonly number[]): Promise<QueuedBuildRow[]>;
  failedPaths(paths: readonly string[]): Promise<Set<string>>;
}
