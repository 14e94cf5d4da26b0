/** Hydra's status codes, shared by Builds.buildStatus and BuildSteps.status. */
export const BuildStatus = Object.freeze({
  Success: 0,
  Failed: 1,
  DepFailed: 2, // builds only
  Aborted: 3, // transient; retryable
  Cancelled: 4,
  Obsolete: 5,
  FailedWithOutput: 6, // builds only
  TimedOut: 7,
  CachedFailure: 8, // steps only; builds use isCachedBuild
  Unsupported: 9,
  LogLimitExceeded: 10,
  NarSizeLimitExceeded: 11,
  NotDeterministic: 12,
  Resolved: 13,
} as const);
export type BuildStatusCode = (typeof BuildStatus)[keyof typeof BuildStatus];

/** BuildSteps.busy while a step runs (the Rust runner's codes); 0 = not busy. */
export const StepBusy = Object.freeze({
  Idle: 0,
  Preparing: 1,
  Connecting: 10,
  SendingInputs: 20,
  Building: 30,
  WaitingForLocalSlot: 35,
  ReceivingOutputs: 40,
  PostProcessing: 50,
} as const);
export type StepBusyCode = (typeof StepBusy)[keyof typeof StepBusy];

/** BuildSteps.type */
export const StepType = Object.freeze({ Build: 0, Substitution: 1 } as const);
export type StepTypeCode = (typeof StepType)[keyof typeof StepType];

/**
 * Builds.buildStatus of a build whose own derivation's step failed for good
 * with `stepStatus`: the same code, except a cached failure (8, steps only)
 * which the build records as failed (1) with isCachedBuild = 1. Other builds
 * needing the step get dependentStatusForFailedStep. Throws for codes that are not a
 * permanent step failure.
 */
export function buildStatusForFailedStep(stepStatus: number): BuildStatusCode {
  switch (stepStatus) {
    case BuildStatus.CachedFailure:
      return BuildStatus.Failed;
    case BuildStatus.Failed:
    case BuildStatus.Aborted: // retries exhausted
    case BuildStatus.FailedWithOutput:
    case BuildStatus.TimedOut:
    case BuildStatus.Unsupported:
    case BuildStatus.LogLimitExceeded:
    case BuildStatus.NarSizeLimitExceeded:
    case BuildStatus.NotDeterministic:
      return stepStatus;
    default:
      throw new RangeError(`step status ${stepStatus} is not a build failure`);
  }
}

/**
 * Builds.buildStatus of a build that needs a failed step for good without it
 * being its own derivation. Hydra's runners write "dependency failed" (2)
 * only when the step failed as a build (1); any other status is passed on as
 * it is (a timeout 7, unsupported 9, aborted 3, log limit 10, ...): Rust
 * runner state/mod.rs:2441-2449 (`update_build_after_failure`), C++ runner
 * builder.cc:458. A cached failure counts as failed (C++ state.hh:78,
 * `buildStatus()`), so its dependents get 2 as well.
 */
export function dependentStatusForFailedStep(stepStatus: number): BuildStatusCode {
  const own = buildStatusForFailedStep(stepStatus);
  return own === BuildStatus.Failed ? BuildStatus.DepFailed : own;
}
