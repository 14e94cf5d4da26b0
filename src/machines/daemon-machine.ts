import { setup } from 'xstate';

/**
 * The runner daemon's lifecycle. Pure, like the step and builder machines:
 * `src/daemon/lifecycle.ts` runs it as a live actor and does the work around
 * it (src/daemon/serve.ts).
 *
 *   starting ─STANDBY─► standby ─STARTED─► running ─DRAIN─► draining ─STOPPED─► stopped
 *   starting ─STARTED─► running ─LOCK_LOST─► reconnecting ─LOCK_RETAKEN─► running
 *   standby|reconnecting ─DRAIN─► draining;  any but stopped ─STOPPED─► stopped
 *
 * A hot standby waits in `standby` (another runner holds the lock) before
 * running; a running daemon whose lock connection went away is
 * `reconnecting` until it has its lock back. STOPPED (a fatal error, or a
 * stop while still starting) ends any state in `stopped`.
 */
export const DAEMON_EVENTS = ['STANDBY', 'STARTED', 'LOCK_LOST', 'LOCK_RETAKEN', 'DRAIN', 'STOPPED'] as const;
export type DaemonEventType = (typeof DAEMON_EVENTS)[number];

export const DAEMON_STATES = ['starting', 'standby', 'running', 'reconnecting', 'draining', 'stopped'] as const;
export type DaemonState = (typeof DAEMON_STATES)[number];

export const daemonMachine = setup({
  types: {} as { events: { type: DaemonEventType } },
}).createMachine({
  id: 'daemon',
  initial: 'starting',
  states: {
    starting: { on: { STANDBY: 'standby', STARTED: 'running', STOPPED: 'stopped' } },
    standby: { on: { STARTED: 'running', DRAIN: 'draining', STOPPED: 'stopped' } },
    running: { on: { LOCK_LOST: 'reconnecting', DRAIN: 'draining', STOPPED: 'stopped' } },
    reconnecting: { on: { LOCK_RETAKEN: 'running', DRAIN: 'draining', STOPPED: 'stopped' } },
    draining: { on: { STOPPED: 'stopped' } },
    stopped: { type: 'final' },
  },
});
