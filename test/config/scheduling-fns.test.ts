import { describe, expect, expectTypeOf, it } from 'vitest';
import type { MachineFreeFn, MachineSortFn } from '../../src/actors/machine-record.ts';
import type { StepSortFn } from '../../src/actors/runnable-queue.ts';
import * as fns from '../../src/config/scheduling-fns.ts';
import { validateRunnerConfig } from '../../src/config/runner-config.ts';

describe('scheduling function names', () => {
  it('the scheduler types are the configuration list (checked by tsc)', () => {
    // machine-record.ts still spells its two unions out; until it re-exports
    // them from config/scheduling-fns.ts, this keeps them equal.
    expectTypeOf<MachineSortFn>().toEqualTypeOf<fns.MachineSortFn>();
    expectTypeOf<MachineFreeFn>().toEqualTypeOf<fns.MachineFreeFn>();
    expectTypeOf<StepSortFn>().toEqualTypeOf<fns.StepSortFn>();
  });

  it('the configuration accepts each name and no other', () => {
    for (const machineSortFn of fns.MACHINE_SORT_FNS) expect(validateRunnerConfig({ machineSortFn }).machineSortFn).toBe(machineSortFn);
    for (const machineFreeFn of fns.MACHINE_FREE_FNS) expect(validateRunnerConfig({ machineFreeFn }).machineFreeFn).toBe(machineFreeFn);
    for (const stepSortFn of fns.STEP_SORT_FNS) expect(validateRunnerConfig({ stepSortFn }).stepSortFn).toBe(stepSortFn);
    expect(() => validateRunnerConfig({ stepSortFn: 'Fastest' })).toThrow();
  });
});
