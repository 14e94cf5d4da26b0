import { assign, setup } from 'xstate';

/**
 * The queue-runner lock (a session-level advisory lock on a connection of its
 * own), in the style of XState's connection-manager example. Pure: the
 * definition names its effects (`startHeartbeat`, `scheduleReconnect`,
 * `pollLock`, `stopTimer`) and `src/db/runner-lock.ts` provides them (the
 * connection, the queries, the timers) and sends the events their outcomes
 * mean.
 *
 *   idle ─ACQUIRED─► held ◄─TOOK_OVER─ standby ◄─STANDBY─ idle
 *                    │  ▲                (polls the lock; takes it once seen free long enough)
 *               LOST │  │ RETAKEN
 *                    ▼  │
 *               reconnecting ─RETRY─► reconnecting (backoff, next attempt)
 *                    ├─TAKEN───► taken   (another runner has it: stop, exit non-zero)
 *                    └─GAVE_UP─► gaveUp  (unreachable past giveUpAfterMs: exit non-zero)
 *   any but released ─RELEASE─► released (the owner stops)
 *
 * `held` beats (a round trip every heartbeatMs), `reconnecting` schedules
 * its next attempt on entry, `standby` polls; leaving any of them stops its
 * timer. `failure` is why the lock ended for good (taken or gaveUp).
 */
export const RUNNER_LOCK_EVENTS = ['ACQUIRED', 'STANDBY', 'TOOK_OVER', 'LOST', 'RETRY', 'RETAKEN', 'TAKEN', 'GAVE_UP', 'RELEASE'] as const;
export type RunnerLockEventType = (typeof RUNNER_LOCK_EVENTS)[number];
export interface RunnerLockEvent {
  type: RunnerLockEventType;
  /** Why (LOST, RETRY, TAKEN, GAVE_UP). */
  error?: Error;
}

export const RUNNER_LOCK_STATES = ['idle', 'standby', 'held', 'reconnecting', 'taken', 'gaveUp', 'released'] as const;
export type RunnerLockState = (typeof RUNNER_LOCK_STATES)[number];

export const runnerLockMachine = setup({
  types: {} as { context: { failure: Error | null }; events: RunnerLockEvent },
  actions: {
    // Effects, provided by the runtime (src/db/runner-lock.ts); no-ops here.
    startHeartbeat: () => {},
    scheduleReconnect: () => {},
    pollLock: () => {},
    stopTimer: () => {},
    recordFailure: assign({ failure: ({ event }) => event.error ?? null }),
  },
}).createMachine({
  id: 'runnerLock',
  initial: 'idle',
  context: { failure: null },
  states: {
    idle: { on: { ACQUIRED: 'held', STANDBY: 'standby', RELEASE: 'released' } },
    standby: { entry: 'pollLock', exit: 'stopTimer', on: { TOOK_OVER: 'held', RELEASE: 'released' } },
    held: { entry: 'startHeartbeat', exit: 'stopTimer', on: { LOST: 'reconnecting', RELEASE: 'released' } },
    reconnecting: {
      entry: 'scheduleReconnect',
      exit: 'stopTimer',
      on: {
        RETRY: { target: 'reconnecting', reenter: true },
        RETAKEN: 'held',
        TAKEN: { target: 'taken', actions: 'recordFailure' },
        GAVE_UP: { target: 'gaveUp', actions: 'recordFailure' },
        RELEASE: 'released',
      },
    },
    taken: { on: { RELEASE: 'released' } },
    gaveUp: { on: { RELEASE: 'released' } },
    released: { type: 'final' },
  },
});
