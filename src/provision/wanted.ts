/**
 * How many machines a system type wants (hydra-provisioner's formula,
 * docs/PROVISIONER.md): ceil((runnable − ignoredRunnables) / runnablesPerMachine),
 * at least 0, clamped to [minMachines, maxMachines]. `runnable` here leaves
 * out steps that only wait on a disabled machine (retry-delayed steps are
 * not runnable in the runner's status to begin with): more machines would
 * not run them sooner.
 */
export interface WantedInput {
  readonly minMachines: number;
  readonly maxMachines: number;
  readonly ignoredRunnables: number;
  readonly runnablesPerMachine: number;
}

export function wantedMachines(t: WantedInput, runnable: number): number {
  const wanted = Math.ceil(Math.max(runnable - t.ignoredRunnables, 0) / t.runnablesPerMachine);
  return Math.min(Math.max(wanted, t.minMachines), t.maxMachines);
}

/** One system type's entry of the runner's status (`machineTypes[type]`). */
export interface TypeStatus {
  readonly runnable?: number;
  readonly running?: number;
  readonly waitingOnDisabled?: number;
}

/** The runnable steps that more machines would help: all runnable ones but those held by disabled machines. */
export function countedRunnables(ts: TypeStatus | undefined): number {
  if (!ts) return 0;
  return Math.max(0, (ts.runnable ?? 0) - (ts.waitingOnDisabled ?? 0));
}
