import type { BuiltOutput, NixSupportInfo, ValidOutputs } from '../db/result-rows.ts';
import type { StepBusyCode } from '../db/status.ts';

// The rows a result writes live in src/db, below both the scheduler and the database code.
export type { BuildProductRow, BuiltOutput, NixSupportInfo, ValidOutputs } from '../db/result-rows.ts';

/**
 * How the scheduler reaches a machine. The gRPC BuilderSession implements it
 * for remote builder agents; tests and benchmarks use in-process builders.
 * Results come back through the `report` callback, exactly once per job
 * unless the job is aborted first.
 */
export interface StepJob {
  /** Unique per attempt. */
  readonly jobId: string;
  readonly drvPath: string;
  readonly outputs: readonly { readonly name: string; readonly path: string | null }[];
  readonly maxSilentTime: number;
  readonly buildTimeout: number;
  readonly maxLogSize: number;
  readonly maxOutputSize: number;
  /**
   * Determinism check (src/actors/determinism.ts): build this many times more
   * and compare; with `enforceDeterminism` a difference fails the step (12).
   * Absent: built once.
   */
  readonly repeats?: number;
  readonly enforceDeterminism?: boolean;
}

/** How often a step was built and whether its rounds differed (BuildSteps.timesBuilt, isNonDeterministic). */
export interface BuildRounds {
  readonly timesBuilt?: number;
  readonly isNonDeterministic?: boolean;
}

export type StepOutcome =
  | {
      readonly kind: 'success';
      readonly outputs: readonly BuiltOutput[];
      readonly nixSupport: NixSupportInfo;
      readonly startTime: number;
      readonly stopTime: number;
      readonly overheadMs: number;
      readonly logFile: string;
      /** The NAR sizes of the outputs' joint closure, when the runner's store could tell (a build's `closuresize`). */
      readonly closureSize?: number;
    } & BuildRounds
  | {
      /** A permanent failure: 1 build failed, 7 timed out, 10 log limit, 11 NAR size limit, 12 not deterministic. */
      readonly kind: 'failure';
      readonly status: 1 | 7 | 10 | 11 | 12;
      readonly errorMsg: string;
      readonly startTime: number;
      readonly stopTime: number;
      readonly logFile: string;
    } & BuildRounds
  | {
      /** Retryable: preparing, import, upload or post-processing failed, or the machine was lost. */
      readonly kind: 'transient';
      readonly errorMsg: string;
      /** The failure points at the machine (it gets a backoff). */
      readonly machineFault: boolean;
    };

export interface BuilderPort {
  start(job: StepJob, report: (outcome: StepOutcome) => void, progress: (busy: StepBusyCode) => void): void;
  abort(jobId: string): void;
}

/** Unix seconds, as Hydra's integer time columns hold. */
export function unixNow(ms = Date.now()): number {
  return Math.floor(ms / 1000);
}

/**
 * Work between a builder's result and the step counting as done: GC roots,
 * log compression, uploads to the binary caches. It may rewrite the outcome
 * (the log's final name) or turn it into a transient failure (an upload
 * failed: the step is retried rather than recorded without its outputs).
 */
export interface StepFinisher {
  finish(job: StepJob, outcome: Exclude<StepOutcome, { kind: 'transient' }>): Promise<StepOutcome>;
  /**
   * A build was queued with every output already valid: its outputs become
   * GC roots and their closure is put in every cache that lacks it, as
   * Hydra does for such a build (C++ queue-monitor.cc:240-245 addRoot,
   * :485-530 copyClosure to the destination store).
   */
  alreadyBuilt?(outputPaths: readonly string[]): Promise<void>;
  /**
   * The outputs of a build that ends cached without an earlier build of
   * them, read where they are valid: sizes and nix-support as a build of
   * them reports (Hydra's runners read the outputs themselves then: Rust
   * get_build_output_cached, C++ getBuildOutputCached → getBuildOutput).
   */
  readOutputs?(outputs: readonly { name: string; path: string }[]): Promise<ValidOutputs>;
}

/**
 * The lazy reader a cached build's write calls when no earlier build has its
 * outputs; null when the finisher cannot read outputs or the outputs could
 * not be read (logged: the build still ends cached, those columns empty).
 */
export function outputsReader(
  finisher: StepFinisher | undefined,
  outputs: readonly { name: string; path: string | null }[],
  onError: (err: unknown) => void,
): (() => Promise<ValidOutputs | null>) | undefined {
  const read = finisher?.readOutputs?.bind(finisher);
  const known = outputs.flatMap((o) => (o.path === null ? [] : [{ name: o.name, path: o.path }]));
  if (!read || known.length === 0) return undefined;
  return () =>
    read(known).catch((err: unknown) => {
      onError(err);
      return null;
    });
}
