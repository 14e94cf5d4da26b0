import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { createActor, initialTransition, transition } from 'xstate';
import { RUNNER_LOCK_EVENTS, RUNNER_LOCK_STATES, runnerLockMachine, type RunnerLockEventType } from '../../src/machines/index.ts';

const effectsOf = (actions: readonly { type: string }[]) => actions.map((a) => a.type).filter((t) => !t.startsWith('xstate.'));

describe('the runner lock machine', () => {
  it('names the effect of entering and leaving each state', () => {
    const path: [RunnerLockEventType, string, string[]][] = [
      ['STANDBY', 'standby', ['pollLock']],
      ['TOOK_OVER', 'held', ['stopTimer', 'startHeartbeat']],
      ['LOST', 'reconnecting', ['stopTimer', 'scheduleReconnect']],
      ['RETRY', 'reconnecting', ['stopTimer', 'scheduleReconnect']],
      ['RETAKEN', 'held', ['stopTimer', 'startHeartbeat']],
      ['LOST', 'reconnecting', ['stopTimer', 'scheduleReconnect']],
      ['GAVE_UP', 'gaveUp', ['stopTimer']],
      ['RELEASE', 'released', []],
    ];
    let [snap] = initialTransition(runnerLockMachine);
    for (const [type, state, effects] of path) {
      const error = new Error(type);
      const [after, actions] = transition(runnerLockMachine, snap, { type, error });
      expect([type, after.value, effectsOf(actions)]).toEqual([type, state, effects]);
      if (type === 'GAVE_UP') expect(after.context.failure).toBe(error);
      snap = after;
    }
    expect(snap.status).toBe('done');
  });

  it('a live actor and the pure transition() agree on random event sequences; refused events change nothing', () => {
    fc.assert(
      fc.property(fc.array(fc.constantFrom(...RUNNER_LOCK_EVENTS), { maxLength: 30 }), (seq) => {
        const actor = createActor(runnerLockMachine).start();
        let [snap] = initialTransition(runnerLockMachine);
        for (const type of seq) {
          const accepted = snap.can({ type });
          const [after, actions] = transition(runnerLockMachine, snap, { type });
          if (!accepted) {
            expect(after.value).toBe(snap.value);
            expect(effectsOf(actions)).toEqual([]);
          }
          if (actor.getSnapshot().status === 'active') actor.send({ type });
          expect(actor.getSnapshot().value).toBe(after.value);
          expect(actor.getSnapshot().status).toBe(after.status);
          snap = after;
        }
      }),
      { numRuns: 300 },
    );
  });

  it('accepts exactly the documented transitions', () => {
    const table: Record<string, Record<string, string>> = {};
    for (const s of RUNNER_LOCK_STATES) {
      const snap = runnerLockMachine.resolveState({ value: s, context: { failure: null } });
      table[s] = {};
      for (const type of RUNNER_LOCK_EVENTS) if (snap.can({ type })) table[s][type] = String(transition(runnerLockMachine, snap, { type })[0].value);
    }
    expect(table).toEqual({
      idle: { ACQUIRED: 'held', STANDBY: 'standby', RELEASE: 'released' },
      standby: { TOOK_OVER: 'held', RELEASE: 'released' },
      held: { LOST: 'reconnecting', RELEASE: 'released' },
      reconnecting: { RETRY: 'reconnecting', RETAKEN: 'held', TAKEN: 'taken', GAVE_UP: 'gaveUp', RELEASE: 'released' },
      taken: { RELEASE: 'released' },
      gaveUp: { RELEASE: 'released' },
      released: {},
    });
  });
});
