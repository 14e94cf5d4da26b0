import pg from 'pg';
import { afterAll, describe, expect, it } from 'vitest';
import { initialTransition, transition } from 'xstate';
import { RunnerLock, type LockState, type RunnerLockOptions } from '../../src/db/runner-lock.ts';
import { sql } from '../../src/db/sql.ts';
import { RunnerLockedError } from '../../src/errors/index.ts';
import { runnerLockMachine, type RunnerLockEvent } from '../../src/machines/index.ts';
import { useTestDatabase } from '../helpers/db.ts';
import { waitFor } from '../helpers/runtime.ts';

interface Shadow {
  /** Every event the runtime sent, as `state -EVENT-> state` (refused ones as `state -EVENT-> refused`). */
  readonly steps: string[];
  /** Where the runtime and XState's pure transition() disagreed. */
  readonly disagreements: string[];
  /** The `state` announcements, as `previous → next`. */
  readonly announced: string[];
}

/**
 * Shadows every event a RunnerLock sends its state actor with XState's pure
 * `transition()` on the definition: the same state after each, the same
 * failure, and an event the definition refuses is refused by the runtime.
 */
function shadow(lock: RunnerLock): Shadow {
  const s: Shadow = { steps: [], disagreements: [], announced: [] };
  const inner = lock as unknown as { send(e: RunnerLockEvent): void };
  const original = inner.send.bind(lock);
  let [snap] = initialTransition(runnerLockMachine);
  lock.on('state', (next: LockState, prev: LockState) => s.announced.push(`${prev} → ${next}`));
  inner.send = (event: RunnerLockEvent) => {
    const before = lock.state;
    if (snap.value !== before) s.disagreements.push(`before ${event.type}: XState at ${snap.value}, runtime at ${before}`);
    const accepted = snap.can(event);
    const [after] = transition(runnerLockMachine, snap, event);
    try {
      original(event);
    } catch (err) {
      s.steps.push(`${before} -${event.type}-> refused`);
      if (accepted) s.disagreements.push(`${event.type} in ${before}: XState accepts, runtime refused`);
      if (lock.state !== before) s.disagreements.push(`${event.type} refused in ${before} but the state is now ${lock.state}`);
      throw err;
    }
    s.steps.push(`${before} -${event.type}-> ${lock.state}`);
    if (!accepted) s.disagreements.push(`${event.type} in ${before}: XState refuses, runtime accepted`);
    if (after.value !== lock.state) s.disagreements.push(`${event.type} in ${before}: XState ${after.value}, runtime ${lock.state}`);
    if (after.context.failure !== lock.failure) s.disagreements.push(`${event.type} in ${before}: failures differ`);
    snap = after;
  };
  return s;
}

/** Ends the session holding the runner lock; returns its pid. */
async function killHolder(pool: pg.Pool): Promise<number> {
  const { rows } = await pool.query<{ pid: number }>(sql('runner/lock-holder'));
  const pid = rows[0]?.pid;
  if (pid === undefined) throw new Error('nobody holds the runner lock');
  await pool.query('select pg_terminate_backend($1)', [pid]);
  return pid;
}

describe('the runner lock, an actor of its XState definition', () => {
  const db = useTestDatabase({ withSchema: false });
  const locks: RunnerLock[] = [];
  const lock = (o: Partial<RunnerLockOptions>) => {
    const l = new RunnerLock({ url: db.url, giveUpAfterMs: 60_000, heartbeatMs: 200, minBackoffMs: 20, maxBackoffMs: 50, standbyPollMs: 50, takeoverAfterMs: 500, ...o });
    locks.push(l);
    return l;
  };

  afterAll(async () => {
    for (const l of locks) await l.release();
  });

  it('holds, re-takes, hands over to a standby, is taken, gives up and is released; every transition as XState makes it', async () => {
    // A holds; B finds it held and waits as a standby.
    const a = lock({});
    const sa = shadow(a);
    await a.acquire();
    expect(a.state).toBe('held');
    const b = lock({ minBackoffMs: 1000, maxBackoffMs: 1000 });
    const sb = shadow(b);
    await expect(b.acquire()).rejects.toBeInstanceOf(RunnerLockedError);
    expect(b.state).toBe('idle');
    const tookOver = b.standby();
    expect(b.state).toBe('standby');

    // A's session dies: A re-takes its lock within its backoff, before the standby would.
    const lost = new Promise<void>((resolve) => a.once('state', (next: LockState) => next === 'reconnecting' && resolve()));
    await killHolder(db.pool);
    await lost;
    await waitFor(() => a.state === 'held', 10_000, 'A to re-take its lock');
    await a.whenHeld();
    expect(b.state).toBe('standby');

    // A stops: the standby takes over once it has seen the lock free long enough.
    await a.release();
    expect(await tookOver).toBe(true);
    expect(b.state).toBe('held');

    // B's session dies and C takes the lock before B's next attempt: B's lock is taken.
    await killHolder(db.pool);
    await waitFor(() => b.state === 'reconnecting', 10_000, 'B to notice');
    const c = lock({ giveUpAfterMs: 300 });
    const sc = shadow(c);
    await c.acquire();
    await waitFor(() => b.state === 'taken', 10_000, 'B to find its lock taken');
    expect(b.failure?.name).toBe('RunnerLockLostError');
    await expect(b.whenHeld()).rejects.toBe(b.failure);

    // C's database goes away for good: C retries, then gives up.
    await db.drop();
    await waitFor(() => c.state === 'gaveUp', 10_000, 'C to give up');
    expect(c.failure?.name).toBe('DatabaseGaveUpError');

    for (const l of [a, b, c]) await l.release();
    for (const l of [a, b, c]) expect(l.state).toBe('released');

    // Refused: the definition accepts nothing once released.
    const send = (l: RunnerLock, type: RunnerLockEvent['type']) => (l as unknown as { send(e: RunnerLockEvent): void }).send({ type });
    expect(() => send(a, 'ACQUIRED')).toThrow(/invalid runner lock event ACQUIRED in released/);
    expect(() => send(b, 'RELEASE')).toThrow(/invalid runner lock event/);
    expect(() => send(c, 'RETAKEN')).toThrow(/invalid runner lock event/);

    for (const s of [sa, sb, sc]) expect(s.disagreements).toEqual([]);
    expect(sa.steps).toEqual(['idle -ACQUIRED-> held', 'held -LOST-> reconnecting', 'reconnecting -RETAKEN-> held', 'held -RELEASE-> released', 'released -ACQUIRED-> refused']);
    expect(sa.announced).toEqual(['idle → held', 'held → reconnecting', 'reconnecting → held', 'held → released']);
    expect(sb.steps).toEqual(['idle -STANDBY-> standby', 'standby -TOOK_OVER-> held', 'held -LOST-> reconnecting', 'reconnecting -TAKEN-> taken', 'taken -RELEASE-> released', 'released -RELEASE-> refused']);
    // C retried at least once before giving up; retries change no state and announce nothing.
    expect(sc.steps[0]).toBe('idle -ACQUIRED-> held');
    expect(sc.steps[1]).toBe('held -LOST-> reconnecting');
    expect(sc.steps.slice(2, -3).every((s) => s === 'reconnecting -RETRY-> reconnecting')).toBe(true);
    expect(sc.steps.slice(2, -3).length).toBeGreaterThan(0);
    expect(sc.steps.slice(-3)).toEqual(['reconnecting -GAVE_UP-> gaveUp', 'gaveUp -RELEASE-> released', 'released -RETAKEN-> refused']);
    expect(sc.announced).toEqual(['idle → held', 'held → reconnecting', 'reconnecting → gaveUp', 'gaveUp → released']);
  });
});
