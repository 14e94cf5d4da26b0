import type { StepState } from '../machines/index.ts';
import type { DerivationSummary } from '../nix/derivation-summary.ts';

/**
 * The scheduler's in-memory records. Steps are compact records, not live
 * XState actors: a nixpkgs-sized queue holds ~300k of them (see
 * docs/ARCHITECTURE.md, "Steps as records"); their transitions still go
 * through the compiled step machine (`stepLifecycle`).
 */

export interface JobsetRecord {
  readonly id: number;
  readonly project: string;
  readonly name: string;
  shares: number;
  /** Build seconds charged in the fair-share window, with when each was charged. */
  seconds: number;
  charges: { at: number; seconds: number }[];
}

/** A queued build as held in memory (kept small: a nixpkgs queue has ~120k). */
export interface BuildRecord {
  readonly id: number;
  readonly jobset: JobsetRecord;
  readonly maxSilent: number;
  readonly timeout: number;
  localPriority: number;
  globalPriority: number;
  /** The step that builds this build's own derivation; null when nothing is left to build. */
  toplevel: StepRecord | null;
  /** Set once the build's final row is written (or it was dropped). */
  done: boolean;
}

/** A (system, required features) combination: steps with the same one are interchangeable for machine choice. */
export interface PlatformRecord {
  readonly key: string;
  readonly system: string;
  readonly features: readonly string[];
  /** preferLocalBuild: lets machines whose mandatory features include `local` take it. */
  readonly preferLocal: boolean;
}

export interface StepOutput {
  readonly name: string;
  /** null for a floating content-addressed output, known only after the build. */
  readonly path: string | null;
}

export interface StepRecord {
  readonly id: number;
  readonly drvPath: string;
  readonly platform: PlatformRecord;
  readonly outputs: readonly StepOutput[];
  readonly isCA: boolean;
  /** The derivation asks for a determinism check (`isDetermistic = "1"`). */
  readonly isDeterministic?: boolean;
  state: StepState;
  /**
   * Unfinished dependencies (this step holds each), dependents (each holds
   * this step) and builds whose own derivation this step is (each holds it).
   * Small arrays are kept exactly sized (see src/actors/compact.ts).
   */
  deps: StepRecord[];
  rdeps: StepRecord[];
  builds: BuildRecord[];
  /** Holders: builds + rdeps + loaders in progress. The step is released at zero. */
  refs: number;
  /** Propagated from every build that needs this step. */
  globalPriority: number;
  localPriority: number;
  lowestBuildId: number;
  /** Interned and shared between steps with the same jobsets: never mutate, replace. */
  jobsets: readonly JobsetRecord[];
  /** Limits: the largest maxsilent / timeout of the builds that need the step (seconds). */
  maxSilent: number;
  timeout: number;
  /** Attempts so far that ended in a transient failure. */
  tries: number;
  /** When a step in retryWait may run again (ms since epoch). */
  retryAt: number;
  /** When the step last became runnable (ms since epoch). */
  runnableSince: number;
  /** Bumped whenever the step's queue position changes, to skip stale queue entries. */
  queueGen: number;
  /** Longest chain of dependents above this step (for WithCriticalPath). */
  criticalPath: number;
  /** The machine building it, while dispatched or building. */
  machine: string | null;
}

export type { DerivationSummary };

/** The store as the scheduler sees it: derivations to read and outputs that may already exist. */
export interface SchedulerStore {
  readDerivation(drvPath: string): Promise<DerivationSummary>;
  /** The subset of `paths` that are valid in the store (or a substituter the runner trusts). */
  queryValid(paths: readonly string[]): Promise<Set<string>>;
}

/** Whether an output path is a known permanent failure (Hydra's FailedPaths). */
export interface FailureCache {
  isFailed(paths: readonly string[]): Promise<boolean>;
}

export interface Clock {
  now(): number;
}

export const systemClock: Clock = { now: () => Date.now() };
