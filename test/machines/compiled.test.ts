import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { createActor, transition, initialTransition, type AnyStateMachine } from 'xstate';
import {
  BUILDER_EVENTS, builderLifecycle, builderMachine, STEP_EVENTS, stepLifecycle, stepMachine,
} from '../../src/machines/index.ts';
import type { CompiledMachine } from '../../src/machines/compile.ts';

function agreesWithXState(machine: AnyStateMachine, compiled: CompiledMachine<string, string>, events: readonly string[]) {
  fc.assert(
    fc.property(fc.array(fc.constantFrom(...events), { maxLength: 40 }), (seq) => {
      let [snap] = initialTransition(machine);
      let state = compiled.initial;
      expect(state).toBe(snap.value);
      for (const e of seq) {
        const accepted = compiled.next(state, e);
        const [after] = transition(machine, snap, { type: e });
        // An event the table rejects leaves XState in the same state too.
        expect(accepted ?? state).toBe(after.value);
        expect(accepted !== undefined).toBe(snap.can({ type: e }));
        snap = after;
        state = accepted ?? state;
        expect(compiled.finals.has(state)).toBe(snap.status === 'done');
      }
    }),
    { numRuns: 500 },
  );
}

describe('compiled lifecycles', () => {
  it('step: the table agrees with XState on random event sequences', () => {
    agreesWithXState(stepMachine, stepLifecycle, STEP_EVENTS);
  });

  it('builder: the table agrees with XState on random event sequences', () => {
    agreesWithXState(builderMachine, builderLifecycle, BUILDER_EVENTS);
  });

  it('a live XState actor follows the same path as the table', () => {
    const actor = createActor(stepMachine).start();
    let s = stepLifecycle.initial;
    for (const e of ['DEPS_DONE', 'DISPATCH', 'START', 'TRANSIENT_FAILURE', 'RETRY_DUE', 'DISPATCH', 'START', 'SUCCEED'] as const) {
      actor.send({ type: e });
      s = stepLifecycle.next(s, e)!;
      expect(actor.getSnapshot().value).toBe(s);
    }
    expect(s).toBe('succeeded');
    expect(actor.getSnapshot().status).toBe('done');
  });

  it('every unfinished step state can be cancelled and every final state accepts nothing', () => {
    for (const s of stepLifecycle.states) {
      if (stepLifecycle.finals.has(s)) expect(stepLifecycle.accepts(s)).toEqual([]);
      else expect(stepLifecycle.next(s, 'CANCEL')).toBe('cancelled');
    }
    expect([...stepLifecycle.finals].sort()).toEqual(['cancelled', 'failed', 'failedWithOutput', 'resolved', 'succeeded']);
  });
});
