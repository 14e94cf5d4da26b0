/**
 * The names of the scheduling functions a runner can be configured with
 * (Hydra's queue runner's `machineSortFn`, `machineFreeFn`, `stepSortFn`):
 * the one list that both the configuration schema (runner-config.ts) and the
 * scheduler's types (src/actors) use.
 */
export const MACHINE_SORT_FNS = ['SpeedFactorOnly', 'CpuCoreCountWithSpeedFactor', 'BogomipsWithSpeedFactor'] as const;
export const MACHINE_FREE_FNS = ['Static', 'Dynamic', 'DynamicWithMaxJobLimit'] as const;
export const STEP_SORT_FNS = ['Legacy', 'WithRdeps', 'WithCriticalPath'] as const;

export type MachineSortFn = (typeof MACHINE_SORT_FNS)[number];
export type MachineFreeFn = (typeof MACHINE_FREE_FNS)[number];
export type StepSortFn = (typeof STEP_SORT_FNS)[number];
