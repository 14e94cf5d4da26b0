import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { initialTransition, transition } from 'xstate';
import type { Lifecycle } from '../../src/daemon/lifecycle.ts';
import { RunnerDaemon } from '../../src/daemon/serve.ts';
import { sql } from '../../src/db/sql.ts';
import { daemonMachine, type DaemonEventType } from '../../src/machines/index.ts';
import { useTestDatabase } from '../helpers/db.ts';
import { quietLog, waitFor } from '../helpers/runtime.ts';

/**
 * Shadows every event a daemon sends its lifecycle with XState's pure
 * `transition()` on the definition; returns the steps taken and any
 * disagreement.
 */
function shadow(lifecycle: Lifecycle): { steps: string[]; disagreements: string[] } {
  const r = { steps: [] as string[], disagreements: [] as string[] };
  const original = lifecycle.send.bind(lifecycle);
  let [snap] = initialTransition(daemonMachine);
  lifecycle.send = (event: DaemonEventType) => {
    const before = lifecycle.state;
    if (snap.value !== before) r.disagreements.push(`before ${event}: XState at ${snap.value}, runtime at ${before}`);
    const accepted = snap.can({ type: event });
    const [after] = transition(daemonMachine, snap, { type: event });
    try {
      original(event);
    } catch (err) {
      r.steps.push(`${before} -${event}-> refused`);
      if (accepted || lifecycle.state !== before) r.disagreements.push(`${event} in ${before}: refused by the runtime only`);
      throw err;
    }
    r.steps.push(`${before} -${event}-> ${lifecycle.state}`);
    if (!accepted || after.value !== lifecycle.state) r.disagreements.push(`${event} in ${before}: XState ${after.value}, runtime ${lifecycle.state}`);
    snap = after;
  };
  return r;
}

describe("the daemon's lifecycle, an actor of its XState definition", () => {
  const db = useTestDatabase();
  const dir = mkdtempSync(join(tmpdir(), 'hydrant-lifecycle-'));
  const daemons: RunnerDaemon[] = [];
  const daemon = (over: Record<string, unknown> = {}) => {
    const d = new RunnerDaemon({ overrides: { dbUrl: db.url, hydraDataDir: dir, rootsDir: join(dir, 'roots'), httpListen: '', ...over }, log: quietLog });
    daemons.push(d);
    return d;
  };

  afterAll(async () => {
    for (const d of daemons) await d.stop();
    rmSync(dir, { recursive: true, force: true });
  });

  it('runs, rides out a lost lock, drains; its standby waits, takes over and drains; every transition as XState makes it', async () => {
    const active = daemon();
    const sa = shadow(active.lifecycle);
    await active.start();
    expect(active.lifecycle.state).toBe('running');

    const standby = daemon({ standby: true });
    const ss = shadow(standby.lifecycle);
    const standbyStarted = standby.start();
    await waitFor(() => standby.lifecycle.state === 'standby', 30_000, 'the standby');

    // The active runner's lock session dies: it re-takes its lock (within 1 s) before the standby would (3 s).
    const { rows } = await db.pool.query<{ pid: number }>(sql('runner/lock-holder'));
    await db.pool.query('select pg_terminate_backend($1)', [rows[0]!.pid]);
    await waitFor(() => sa.steps.includes('reconnecting -LOCK_RETAKEN-> running'), 30_000, 'the lock re-taken');
    expect(standby.lifecycle.state).toBe('standby');

    await active.stop();
    await standbyStarted;
    expect(standby.lifecycle.state).toBe('running');
    await standby.stop();

    // Refused: nothing follows stopped.
    expect(() => active.lifecycle.send('STARTED')).toThrow(/invalid lifecycle event STARTED in stopped/);

    expect(sa.disagreements).toEqual([]);
    expect(ss.disagreements).toEqual([]);
    expect(sa.steps).toEqual([
      'starting -STARTED-> running', 'running -LOCK_LOST-> reconnecting', 'reconnecting -LOCK_RETAKEN-> running',
      'running -DRAIN-> draining', 'draining -STOPPED-> stopped', 'stopped -STARTED-> refused',
    ]);
    expect(ss.steps).toEqual(['starting -STANDBY-> standby', 'standby -STARTED-> running', 'running -DRAIN-> draining', 'draining -STOPPED-> stopped']);
  }, 60_000);
});
