import { EventEmitter } from 'node:events';

/**
 * The daemon's lifecycle: starting → running → draining → stopped. A hot
 * standby waits in `standby` (another runner holds the lock) before running;
 * a running daemon whose database went away is `reconnecting` until it has
 * its lock back. Any state may go to stopped on a fatal error. Transitions
 * outside this table are programming errors and throw.
 */
export type LifecycleState = 'starting' | 'standby' | 'running' | 'reconnecting' | 'draining' | 'stopped';

const ALLOWED: Record<LifecycleState, readonly LifecycleState[]> = {
  starting: ['standby', 'running', 'stopped'],
  standby: ['running', 'draining', 'stopped'],
  running: ['reconnecting', 'draining', 'stopped'],
  reconnecting: ['running', 'draining', 'stopped'],
  draining: ['stopped'],
  stopped: [],
};

export class Lifecycle extends EventEmitter {
  private current: LifecycleState = 'starting';

  get state(): LifecycleState {
    return this.current;
  }

  to(next: LifecycleState): void {
    if (!ALLOWED[this.current].includes(next)) {
      throw new Error(`invalid lifecycle transition ${this.current} → ${next}`);
    }
    const prev = this.current;
    this.current = next;
    this.emit('change', next, prev);
  }

  /** Resolves when the lifecycle reaches `state` (at once if it already has). */
  when(state: LifecycleState): Promise<void> {
    if (this.current === state) return Promise.resolve();
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
