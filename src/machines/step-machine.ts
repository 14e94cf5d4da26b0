import { setup } from 'xstate';

/**
 * The lifecycle of one build step (one derivation to build). Pure: no
 * actions, no timers; deadlines (retry due times, timeouts) are data kept by
 * the runtime. This definition is the single source of truth: the runtime
 * compiles it into a transition table (src/machines/compile.ts) and tests
 * check the two agree, and the visualizer draws it.
 *
 *   queued ──DEPS_DONE──► runnable ──DISPATCH──► dispatched ──START──► building
 *     │                   │  ▲                    │  │                  │
 *     │ DEP_FAILED,       │  │ RETRY_DUE          │  └REQUEUE──►runnable│ SUCCEED ─► succeeded
 *     │ CACHED_FAILURE    │  └──── retryWait ◄────┴─TRANSIENT_FAILURE───┤ FAIL ────► failed
 *     ▼                   │ RESOLVE ─► resolved                         │ FAIL_WITH_OUTPUT ─► failedWithOutput
 *   failed                │ UNSUPPORTED, CACHED_FAILURE ─► failed       │ ABORT (retries used up) ─► failed
 *                         │ ALREADY_BUILT ─► succeeded
 *
 * RESOLVE: the derivation was resolved (content-addressed inputs) and its
 * resolved derivation is built instead. ALREADY_BUILT: preparing the step
 * found its outputs built before (a floating content-addressed derivation,
 * whose output paths only earlier steps' rows know).
 *
 * CANCEL (no build needs the step any more) ends any unfinished state in
 * `cancelled`.
 */
export const STEP_EVENTS = [
  'DEPS_DONE',
  'DEP_FAILED',
  'CACHED_FAILURE',
  'DISPATCH',
  'START',
  'REQUEUE',
  'SUCCEED',
  'FAIL',
  'FAIL_WITH_OUTPUT',
  'TRANSIENT_FAILURE',
  'ABORT',
  'RETRY_DUE',
  'RESOLVE',
  'ALREADY_BUILT',
  'UNSUPPORTED',
  'CANCEL',
] as const;
export type StepEventType = (typeof STEP_EVENTS)[number];

export const STEP_STATES = [
  'queued',
  'runnable',
  'dispatched',
  'building',
  'retryWait',
  'succeeded',
  'failed',
  'failedWithOutput',
  'resolved',
  'cancelled',
] as const;
export type StepState = (typeof STEP_STATES)[number];

export const stepMachine = setup({
  types: {} as { events: { type: StepEventType } },
}).createMachine({
  id: 'step',
  initial: 'queued',
  states: {
    queued: {
      on: {
        DEPS_DONE: 'runnable',
        DEP_FAILED: 'failed',
        CACHED_FAILURE: 'failed',
        CANCEL: 'cancelled',
      },
    },
    runnable: {
      on: {
        DISPATCH: 'dispatched',
        RESOLVE: 'resolved',
        ALREADY_BUILT: 'succeeded',
        UNSUPPORTED: 'failed',
        CACHED_FAILURE: 'failed',
        CANCEL: 'cancelled',
      },
    },
    dispatched: {
      on: {
        START: 'building',
        REQUEUE: 'runnable',
        TRANSIENT_FAILURE: 'retryWait',
        ABORT: 'failed',
        CANCEL: 'cancelled',
      },
    },
    building: {
      on: {
        SUCCEED: 'succeeded',
        FAIL: 'failed',
        FAIL_WITH_OUTPUT: 'failedWithOutput',
        TRANSIENT_FAILURE: 'retryWait',
        ABORT: 'failed',
        REQUEUE: 'runnable',
        CANCEL: 'cancelled',
      },
    },
    retryWait: {
      on: {
        RETRY_DUE: 'runnable',
        CANCEL: 'cancelled',
      },
    },
    succeeded: { type: 'final' },
    failed: { type: 'final' },
    failedWithOutput: { type: 'final' },
    resolved: { type: 'final' },
    cancelled: { type: 'final' },
  },
});
