import { BuildStatus } from '../db/status.ts';

/** Job of the demo jobset → the Hydra build status it must end with. */
export const EXPECTED_STATUS: Readonly<Record<string, number>> = Object.freeze({
  toolchain: BuildStatus.Success,
  libcore: BuildStatus.Success,
  libnet: BuildStatus.Success,
  libui: BuildStatus.Success,
  cli: BuildStatus.Success,
  assets: BuildStatus.Success,
  app: BuildStatus.Success,
  manual: BuildStatus.Success,
  checks: BuildStatus.Success,
  release: BuildStatus.Success,
  broken: BuildStatus.Failed,
  plugin: BuildStatus.DepFailed,
});

/** Job whose output carries Hydra build products and a release name. */
export const RELEASE_JOB = 'release';

const NAMES: Record<number, string> = {
  [BuildStatus.Success]: 'succeeded',
  [BuildStatus.Failed]: 'failed',
  [BuildStatus.DepFailed]: 'dependency failed',
  [BuildStatus.Aborted]: 'aborted',
  [BuildStatus.Cancelled]: 'cancelled',
  [BuildStatus.Obsolete]: 'obsolete',
  [BuildStatus.FailedWithOutput]: 'failed with output',
  [BuildStatus.TimedOut]: 'timed out',
  [BuildStatus.CachedFailure]: 'cached failure',
  [BuildStatus.Unsupported]: 'unsupported system',
  [BuildStatus.LogLimitExceeded]: 'log limit exceeded',
  [BuildStatus.NarSizeLimitExceeded]: 'output limit exceeded',
  [BuildStatus.NotDeterministic]: 'not deterministic',
  [BuildStatus.Resolved]: 'resolved',
};

/** Hydra's wording of a build status. */
export function statusName(status: number | null): string {
  if (status === null) return 'not finished';
  return NAMES[status] ?? `status ${status}`;
}

export interface OutcomeBuild {
  job: string;
  finished: boolean;
  status: number | null;
}

/** Every difference from the expected outcome, one line each; empty when it is the expected one. */
export function compareOutcome(builds: readonly OutcomeBuild[]): string[] {
  const diffs: string[] = [];
  const byJob = new Map(builds.map((b) => [b.job, b]));
  for (const [job, want] of Object.entries(EXPECTED_STATUS)) {
    const b = byJob.get(job);
    if (!b) diffs.push(`${job}: no build (expected ${statusName(want)})`);
    else if (!b.finished) diffs.push(`${job}: not finished (expected ${statusName(want)})`);
    else if (b.status !== want) diffs.push(`${job}: ${statusName(b.status)} (expected ${statusName(want)})`);
  }
  for (const b of builds) if (!(b.job in EXPECTED_STATUS)) diffs.push(`${b.job}: unexpected job`);
  return diffs;
}
