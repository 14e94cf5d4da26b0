/**
 * The BuildSteps columns from what the builder reported, as Hydra writes
 * them (C++ hydra-queue-runner.cc:356-357): timesBuilt when positive,
 * isNonDeterministic only when the step was built more than once. A builder
 * that reports nothing built it once.
 */
export function roundsColumns(r: { timesBuilt?: number; isNonDeterministic?: boolean }): { timesBuilt: number | null; isNonDeterministic: boolean | null } {
  const timesBuilt = r.timesBuilt ?? 1;
  return { timesBuilt: timesBuilt > 0 ? timesBuilt : null, isNonDeterministic: timesBuilt > 1 ? r.isNonDeterministic === true : null };
}
