import { setup } from 'xstate';

/**
 * The lifecycle of one build machine (a connected builder agent; Hydra calls
 * these "machines"). Pure, like the step machine; the failure backoff and the
 * reconnect grace period are deadlines kept as data by the runtime.
 *
 *   joining ─JOINED─► ready ⇄ busy        (FULL / SLOT_FREE)
 *   ready|busy ─FAILURES_EXCEEDED─► disabled ─BACKOFF_ELAPSED─► ready
 *   ready|busy|disabled ─DISCONNECTED─► unreachable ─RECONNECTED─► ready
 *                                                  └GRACE_EXPIRED─► gone
 *   ready|busy|disabled ─DRAIN─► draining ─DRAINED─► gone
 *   joining|draining ─DISCONNECTED─► gone;  any ─REMOVE─► gone
 */
export const BUILDER_EVENTS = [
  'JOINED',
  'FULL',
  'SLOT_FREE',
  'FAILURES_EXCEEDED',
  'BACKOFF_ELAPSED',
  'DISCONNECTED',
  'RECONNECTED',
  'GRACE_EXPIRED',
  'DRAIN',
  'DRAINED',
  'REMOVE',
] as const;
export type BuilderEventType = (typeof BUILDER_EVENTS)[number];

export const BUILDER_STATES = ['joining', 'ready', 'busy', 'disabled', 'unreachable', 'draining', 'gone'] as const;
export type BuilderState = (typeof BUILDER_STATES)[number];

export const builderMachine = setup({
  types: {} as { events: { type: BuilderEventType } },
}).createMachine({
  id: 'builder',
  initial: 'joining',
  states: {
    joining: { on: { JOINED: 'ready', DISCONNECTED: 'gone', REMOVE: 'gone' } },
    ready: {
      on: {
        FULL: 'busy',
        FAILURES_EXCEEDED: 'disabled',
        DISCONNECTED: 'unreachable',
        DRAIN: 'draining',
        REMOVE: 'gone',
      },
    },
    busy: {
      on: {
        SLOT_FREE: 'ready',
        FAILURES_EXCEEDED: 'disabled',
        DISCONNECTED: 'unreachable',
        DRAIN: 'draining',
        REMOVE: 'gone',
      },
    },
    disabled: {
      on: { BACKOFF_ELAPSED: 'ready', DISCONNECTED: 'unreachable', DRAIN: 'draining', REMOVE: 'gone' },
    },
    unreachable: { on: { RECONNECTED: 'ready', GRACE_EXPIRED: 'gone', REMOVE: 'gone' } },
    draining: { on: { DRAINED: 'gone', DISCONNECTED: 'gone', REMOVE: 'gone' } },
    gone: { type: 'final' },
  },
});
