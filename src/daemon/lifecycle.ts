import { EventEmitter } from 'node:events';
import { createActor, transition, type Actor } from 'xstate';
import { DAEMON_EVENTS, daemonMachine, type DaemonEventType, type DaemonState } from '../machines/index.ts';

/**
 * The daemon's lifecycle: starting → running → draining → stopped, with
 * `standby` (a hot standby waiting for the lock) and `reconnecting` (the
 * lock's connection went away); see src/machines/daemon-machine.ts, the only
 * place that decides transitions. This is a live actor of that definition:
 * an event the definition does not accept in the current state is a
 * programming error and throws. Every change is announced as `change`
 * (next, previous).
 */
export type LifecycleState = DaemonState;

export class Lifecycle extends EventEmitter {
  private readonly actor: Actor<typeof daemonMachine> = createActor(daemonMachine).start();

  get state(): LifecycleState {
    return this.actor.getSnapshot().value;
  }

  /** Sends `event`; throws if the definition does not accept it in the current state. */
  send(event: DaemonEventType): void {
    const before = this.actor.getSnapshot();
    if (!before.can({ type: event })) throw new Error(`invalid lifecycle event ${event} in ${before.value}`);
    this.actor.send({ type: event });
    const next = this.actor.getSnapshot().value;
    if (next !== before.value) this.emit('change', next, before.value);
  }

  /**
   * Goes to `next` by the one event the definition accepts here that leads
   * there; throws if there is none.
   */
  to(next: LifecycleState): void {
    const snapshot = this.actor.getSnapshot();
    const event = DAEMON_EVENTS.find((type) => snapshot.can({ type }) && transition(daemonMachine, snapshot, { type })[0].value === next);
    if (!event) throw new Error(`invalid lifecycle transition ${snapshot.value} → ${next}`);
    this.send(event);
  }

  /** Resolves when the lifecycle reaches `state` (at once if it already has). */
  when(state: LifecycleState): Promise<void> {
    if (this.state === state) return Promise.resolve();
    return new Promise((resolve) => {
      const on = (s: LifecycleState) => {
        if (s === state) {
          this.off('change', on);
          resolve();
        }
      };
      this.on('change', on);
    });
  }
}
