import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { initialTransition, transition } from 'xstate';
import { Lifecycle, type LifecycleState } from '../../src/daemon/lifecycle.ts';
import { DAEMON_EVENTS, DAEMON_STATES, daemonMachine, type DaemonEventType } from '../../src/machines/index.ts';

/**
 * Drives a live Lifecycle and shadows each event with XState's pure
 * `transition()` on the definition: the states agree, refused events throw
 * and change nothing, and `change` is announced once per change.
 */
function drive(lifecycle: Lifecycle, events: readonly DaemonEventType[]): LifecycleState[] {
  let [snap] = initialTransition(daemonMachine);
  const changes: [LifecycleState, LifecycleState][] = [];
  lifecycle.on('change', (next: LifecycleState, prev: LifecycleState) => changes.push([next, prev]));
  const seen: LifecycleState[] = [lifecycle.state];
  expect(lifecycle.state).toBe(snap.value);
  for (const e of events) {
    const before = lifecycle.state;
    const accepted = snap.can({ type: e });
    const [after] = transition(daemonMachine, snap, { type: e });
    const n = changes.length;
    if (accepted) lifecycle.send(e);
    else expect(() => lifecycle.send(e)).toThrow(/invalid lifecycle event/);
    expect(lifecycle.state).toBe(after.value);
    if (!accepted) expect(after.value).toBe(before);
    expect(changes.length).toBe(after.value === before ? n : n + 1);
    if (after.value !== before) expect(changes.at(-1)).toEqual([after.value, before]);
    snap = after;
    seen.push(lifecycle.state);
  }
  return seen;
}

describe('the daemon lifecycle', () => {
  it('runs the serve path: standby, running, an outage, a drain', async () => {
    const lifecycle = new Lifecycle();
    const stopped = lifecycle.when('stopped');
    const seen = drive(lifecycle, ['STANDBY', 'STARTED', 'LOCK_LOST', 'LOCK_RETAKEN', 'LOCK_LOST', 'DRAIN', 'STOPPED']);
    expect(seen).toEqual(['starting', 'standby', 'running', 'reconnecting', 'running', 'reconnecting', 'draining', 'stopped']);
    await stopped;
    await lifecycle.when('stopped');
  });

  it('refuses what the definition refuses', () => {
    const lifecycle = new Lifecycle();
    drive(lifecycle, ['DRAIN', 'LOCK_LOST', 'LOCK_RETAKEN', 'STARTED', 'STANDBY', 'LOCK_RETAKEN', 'DRAIN', 'STARTED', 'STOPPED', 'STOPPED', 'DRAIN']);
    expect(lifecycle.state).toBe('stopped');
  });

  it('agrees with XState on random event sequences', () => {
    fc.assert(
      fc.property(fc.array(fc.constantFrom(...DAEMON_EVENTS), { maxLength: 30 }), (seq) => {
        drive(new Lifecycle(), seq);
      }),
      { numRuns: 300 },
    );
  });

  it('to(state) takes the one event leading there and throws where none does', () => {
    for (const from of DAEMON_STATES) {
      for (const target of DAEMON_STATES) {
        const snap = daemonMachine.resolveState({ value: from, context: {} });
        const events = DAEMON_EVENTS.filter((type) => snap.can({ type }) && transition(daemonMachine, snap, { type })[0].value === target);
        expect(events.length).toBeLessThanOrEqual(1);
        // Reach `from` by the shortest path, then ask for `target`.
        const lifecycle = new Lifecycle();
        const path: Record<LifecycleState, LifecycleState[]> = {
          starting: [], standby: ['standby'], running: ['running'], reconnecting: ['running', 'reconnecting'],
          draining: ['running', 'draining'], stopped: ['stopped'],
        };
        for (const s of path[from]) lifecycle.to(s);
        expect(lifecycle.state).toBe(from);
        if (events.length === 1) {
          lifecycle.to(target);
          expect(lifecycle.state).toBe(target);
        } else {
          expect(() => lifecycle.to(target)).toThrow(/invalid lifecycle transition/);
          expect(lifecycle.state).toBe(from);
        }
      }
    }
  });
});
