import { setup } from 'xstate';

/**
 * One machine `hydrant provision` made (docs/PROVISIONER.md). Pure: the
 * provisioner (src/provision/provisioner.ts) runs one live actor per machine,
 * persists its snapshot before doing what the new state asks of the backend,
 * and feeds back what happened.
 *
 *   requested ─CREATE─► creating ─CREATED─► joining ─JOINED─► active ⇄ idle (IDLE / BUSY)
 *   creating ─FAILED─► backoff ─RETRY─► creating          (backoff ─DESTROY─► destroying)
 *   idle ─STOP─► stopping ─STOPPED─► stopped ─START─► starting ─STARTED─► joining
 *   joining|active|idle|stopped|backoff ─DESTROY─► destroying ─DESTROYED─► gone (active: it stopped behind our back)
 *   requested ─ADOPT─► joining   (found by the backend's list, no snapshot of it)
 *   requested ─CANCEL─► gone;  any made machine ─LOST─► gone (the backend no longer lists it)
 *
 * A failed stop goes back to idle and a failed start back to stopped (the
 * next pass decides again); a failed destroy stays in destroying and is
 * tried again. Context is owned by the provisioner (attempts, timestamps,
 * the backend's answer); the machine only decides which moves are legal.
 */
export const PROVISIONED_EVENTS = [
  'CREATE',
  'CREATED',
  'FAILED',
  'RETRY',
  'JOINED',
  'IDLE',
  'BUSY',
  'STOP',
  'STOPPED',
  'START',
  'STARTED',
  'DESTROY',
  'DESTROYED',
  'ADOPT',
  'CANCEL',
  'LOST',
] as const;
export type ProvisionedEventType = (typeof PROVISIONED_EVENTS)[number];

export const PROVISIONED_STATES = ['requested', 'creating', 'backoff', 'joining', 'active', 'idle', 'stopping', 'stopped', 'starting', 'destroying', 'gone'] as const;
export type ProvisionedState = (typeof PROVISIONED_STATES)[number];

/** States in which the machine exists or may exist at the backend (it counts against maxMachines). */
export const PROVISIONED_EXISTING: ReadonlySet<ProvisionedState> = new Set(PROVISIONED_STATES.filter((s) => s !== 'gone'));
/** States in which the machine is up or on its way up (it counts towards the wanted number). */
export const PROVISIONED_RUNNING: ReadonlySet<ProvisionedState> = new Set<ProvisionedState>(['requested', 'creating', 'backoff', 'joining', 'active', 'idle', 'starting']);

export const provisionedMachine = setup({
  types: {} as { events: { type: ProvisionedEventType } },
}).createMachine({
  id: 'provisioned',
  initial: 'requested',
  states: {
    requested: { on: { CREATE: 'creating', ADOPT: 'joining', CANCEL: 'gone' } },
    creating: { on: { CREATED: 'joining', FAILED: 'backoff', LOST: 'gone' } },
    backoff: { on: { RETRY: 'creating', DESTROY: 'destroying', CREATED: 'joining' } },
    joining: { on: { JOINED: 'active', DESTROY: 'destroying', LOST: 'gone' } },
    active: { on: { IDLE: 'idle', DESTROY: 'destroying', LOST: 'gone' } },
    idle: { on: { BUSY: 'active', STOP: 'stopping', DESTROY: 'destroying', LOST: 'gone' } },
    stopping: { on: { STOPPED: 'stopped', FAILED: 'idle', LOST: 'gone' } },
    stopped: { on: { START: 'starting', DESTROY: 'destroying', LOST: 'gone' } },
    starting: { on: { STARTED: 'joining', FAILED: 'stopped', LOST: 'gone' } },
    destroying: { on: { DESTROYED: 'gone', FAILED: 'destroying', LOST: 'gone' } },
    gone: { type: 'final' },
  },
});
