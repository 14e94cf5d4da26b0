import { randomBytes } from 'node:crypto';
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { freePort, startEmbeddedPostgres, type EmbeddedDatabase } from '../../src/db/embedded.ts';
import { createPool, withTransaction } from '../../src/db/pool.ts';
import { PgSchedulerDb } from '../../src/db/scheduler-db.ts';
import { ensureSchema } from '../../src/db/schema.ts';
import { LocalNixStore } from '../../src/nix/local-store.ts';
import { startCli } from '../helpers/cli.ts';
import { createJobset, queueBuild } from '../helpers/hydra-rows.ts';
import { startStep } from '../../src/db/step-rows.ts';
import { streamRows } from '../../src/db/cursor.ts';
import { InProcessRunner } from '../helpers/in-process-runner.ts';
import { instantiateOutcomes, OUTCOMES, queueJobs } from '../helpers/outcomes.ts';
import { instantiate, MK_DRV, realise } from '../helpers/nix.ts';
import { waitFor } from '../helpers/runtime.ts';

/**
 * Database outages with a real PostgreSQL of the test's own, stopped (fast
 * shutdown, as a fast-mode restart of the server does) and started again on the same
 * port, while real builds run on the runner's local builder.
 */
/**
 * The lock's heartbeat for the tests that wait for it to notice a hang: a
 * hang is noticed within twice this (the default, 5 s, took up to 10 s a
 * test); not shorter, so that a loaded machine's slow reply is no hang.
 */
const HEARTBEAT_S = 2;

describe('a database outage', () => {
  let stateDir: string;
  let port: number;
  let server: EmbeddedDatabase | null = null;
  let url: string;

  const startServer = async () => {
    server = await startEmbeddedPostgres({ stateDir, port, ephemeral: true });
    url = server.url;
  };
  const stopServer = async () => {
    await server?.stop();
    server = null;
  };

  beforeAll(async () => {
    stateDir = mkdtempSync(join(tmpdir(), 'hydrant-outage-'));
    port = await freePort();
    await startServer();
    const pool = createPool(url, { max: 1 });
    await ensureSchema(pool);
    await pool.end();
  });
  afterAll(async () => {
    await stopServer();
    rmSync(stateDir, { recursive: true, force: true });
  });

  /** A query on a fresh pool (the server may have restarted since the last one). */
  async function query<T extends pg.QueryResultRow>(text: string, values: unknown[] = []): Promise<T[]> {
    const pool = createPool(url, { max: 1 });
    try {
      return (await pool.query<T>(text, values)).rows;
    } finally {
      await pool.end();
    }
  }

  /** Builds that finish while the database is away (OUTCOMES, 2 s each). */
  async function queueSet(jobset: number, tag: string): Promise<Record<string, number>> {
    const drvs = await instantiateOutcomes(tag, 2);
    const pool = createPool(url, { max: 1 });
    try {
      return await queueJobs(pool, jobset, drvs);
    } finally {
      await pool.end();
    }
  }

  async function expectEnded(ids: Record<string, number>): Promise<void> {
    const all = Object.values(ids);
    await waitFor(async () => (await query<{ n: number }>('select count(*)::int n from builds where id = any($1) and finished = 1', [all]))[0]!.n === all.length, 60_000, 'every build to end');
    const rows = await query<{ id: number; buildstatus: number }>('select id, buildstatus from builds where id = any($1)', [all]);
    const status = Object.fromEntries(Object.entries(ids).map(([name, id]) => [name, rows.find((r) => r.id === id)!.buildstatus]));
    expect(status).toEqual(OUTCOMES);
    // Each build's own derivation succeeded at most once.
    const dup = await query('select build, drvpath from buildsteps where build = any($1) and status = 0 group by build, drvpath having count(*) > 1', [all]);
    expect(dup).toEqual([]);
  }

  async function busySteps(ids: Record<string, number>): Promise<number> {
    return (await query<{ n: number }>('select count(*)::int n from buildsteps where build = any($1) and busy != 0', [Object.values(ids)]))[0]!.n;
  }

  /** A jobset of its own for a test, made on a short-lived connection. */
  async function newJobset(project: string): Promise<number> {
    const pool = createPool(url, { max: 1 });
    try {
      return await createJobset(pool, project, `main-${randomBytes(3).toString('hex')}`);
    } finally {
      await pool.end();
    }
  }

  /**
   * Runs `body` with an in-process runner in a directory of its own, then
   * stops the runner and removes the directory; returns the runner's daemon
   * (its exit code is read after the stop).
   */
  async function withRunner(
    tag: string,
    options: Parameters<typeof InProcessRunner.start>[2],
    body: (runner: InProcessRunner, d: InProcessRunner['daemon']) => Promise<void>,
  ): Promise<InProcessRunner['daemon']> {
    const dir = mkdtempSync(join(tmpdir(), `hydrant-outage-${tag}-`));
    const runner = await InProcessRunner.start(url, dir, { tokenPaths: [], ...options });
    try {
      await body(runner, runner.daemon);
    } finally {
      await runner.stop();
      rmSync(dir, { recursive: true, force: true });
    }
    return runner.daemon;
  }

  /**
   * Freezes the backend of the runner's lock session (SIGSTOP) until `thaw()`
   * or the end of `body`: the lock stays held by a session the runner can no
   * longer reach.
   */
  async function withHungLockBackend(body: (thaw: () => void) => Promise<void>): Promise<void> {
    const pid = (await query<{ pid: number }>("select pid from pg_stat_activity where application_name = 'hydrant-lock'"))[0]!.pid;
    process.kill(pid, 'SIGSTOP');
    let frozen = true;
    const thaw = () => {
      if (frozen) process.kill(pid, 'SIGCONT');
      frozen = false;
    };
    try {
      await body(thaw);
    } finally {
      thaw();
    }
  }

  it('rides out a quick restart and a long stop: results kept and written, every build ends right, no busy row, the runner still running', async () => {
    const jobset = await newJobset('outage');
    const d = await withRunner('runner', { localBuilderJobs: 4, dbGiveUpAfterInS: 120 }, async (runner, d) => {
      // 1. A quick restart (fast shutdown and start) while three steps build.
      const quick = await queueSet(jobset, 'quick');
      await waitFor(async () => (await busySteps(quick)) === 3, 60_000, 'three steps building');
      await stopServer();
      await startServer();
      await expectEnded(quick);
      expect(await busySteps(quick)).toBe(0);
      expect(d.lifecycle.state).toBe('running');

      // 2. A long stop: the three steps end while the database is away.
      const long = await queueSet(jobset, 'long');
      await waitFor(async () => (await busySteps(long)) === 3, 60_000, 'three steps building');
      await stopServer();
      const s = d.runtime!.scheduler;
      await waitFor(() => s.pendingWrites === 3, 60_000, 'three results waiting for the database');
      expect(d.lifecycle.state).toBe('reconnecting');
      const metrics = await (await fetch(`${runner.url}/metrics`)).text();
      expect(metrics).toMatch(/^hydrant_db_pending_writes 3$/m);
      expect(metrics).toMatch(/^hydrant_runner_state\{state="reconnecting"\} 1$/m);
      // Longer than the reconnect backoff: several attempts fail meanwhile (OUTAGE_MS=65000 for a minute's outage).
      await new Promise((r) => setTimeout(r, Number(process.env.OUTAGE_MS ?? 5000)));
      await startServer();
      await expectEnded(long);
      expect(await busySteps(long)).toBe(0);
      expect(d.lifecycle.state).toBe('running');
      expect(s.pendingWrites).toBe(0);
    });
    expect(d.exitCode).toBe(0);
  }, 240_000);

  /** SIGSTOP/SIGCONT to the test's own server: the postmaster (postmaster.pid) and its children. */
  function signalServer(sig: 'SIGSTOP' | 'SIGCONT'): void {
    const postmaster = Number(readFileSync(join(stateDir, 'postgres', 'postmaster.pid'), 'utf8').split('\n')[0]);
    let children: number[] = [];
    try {
      children = execFileSync('pgrep', ['-P', String(postmaster)]).toString().trim().split('\n').filter(Boolean).map(Number);
    } catch {
      // no children
    }
    for (const pid of [postmaster, ...children]) process.kill(pid, sig);
  }

  it('rides out a hung server: the heartbeat notices, the lock is re-taken, every build ends right', async () => {
    const jobset = await newJobset('hung');
    const d = await withRunner('hung', { localBuilderJobs: 4, dbGiveUpAfterInS: 120, dbHeartbeatInS: HEARTBEAT_S }, async (_runner, d) => {
      const ids = await queueSet(jobset, 'hung');
      await waitFor(async () => (await busySteps(ids)) === 3, 60_000, 'three steps building');
      signalServer('SIGSTOP');
      try {
        await waitFor(() => d.lifecycle.state === 'reconnecting', 60_000, 'the heartbeat to notice');
      } finally {
        signalServer('SIGCONT');
      }
      await expectEnded(ids);
      expect(await busySteps(ids)).toBe(0);
      expect(d.lifecycle.state).toBe('running');
    });
    expect(d.exitCode).toBe(0);
  }, 180_000);

  it("takes its lock back from its own hung session instead of mistaking it for another runner's", async () => {
    const d = await withRunner('stale', { dbGiveUpAfterInS: 120, dbHeartbeatInS: HEARTBEAT_S }, async (_runner, d) =>
      // Only the lock's backend hangs: it keeps holding the lock while the runner reconnects.
      withHungLockBackend(async (thaw) => {
        await waitFor(() => d.lifecycle.state === 'reconnecting', 60_000, 'the heartbeat to notice');
        // Several reconnects meet the lock held by the hung session (longer than the backoff).
        await new Promise((r) => setTimeout(r, 3000));
        expect(d.lifecycle.state).toBe('reconnecting');
        thaw();
        await waitFor(() => d.lifecycle.state === 'running', 60_000, 'the lock re-taken');
      }),
    );
    expect(d.exitCode).toBe(0);
  }, 120_000);

  it('stops when asked (SIGTERM) while a load waits for the database', async () => {
    await withRunner('load', { dbGiveUpAfterInS: 600, shutdownGraceInS: 1, dbHeartbeatInS: HEARTBEAT_S }, async (_runner, d) =>
      withHungLockBackend(async () => {
        await waitFor(() => d.lifecycle.state === 'reconnecting', 60_000, 'the heartbeat to notice');
        // A build whose output exists: its load ends it as cached, a write that waits for the lock.
        const nonce = randomBytes(4).toString('hex');
        const [drv] = await instantiate(`let ${MK_DRV} in { x = mk { name = "cached-${nonce}"; script = "echo > $out"; }; }`, ['x']);
        await realise([drv!]);
        const pool = createPool(url, { max: 1 });
        const jobset = await createJobset(pool, 'load', `j-${nonce}`);
        const id = await queueBuild(pool, jobset, drv!, 'x', 'x86_64-linux', (await new LocalNixStore().readDerivation(drv!)).outputs);
        await pool.query("notify builds_added, ''");
        await pool.end();
        await waitFor(() => d.runtime!.scheduler.pendingWrites === 1, 60_000, 'the cached build waiting for the database');
        await d.stop();
        expect(d.lifecycle.state).toBe('stopped');
        expect(d.exitCode).toBe(0);
        expect((await query<{ finished: number }>('select finished from builds where id = $1', [id]))[0]!.finished).toBe(0);
      }),
    );
  }, 120_000);

  it('a cursor read whose server went away fails instead of hanging the queue monitor', async () => {
    const pool = createPool(url, { max: 1 });
    try {
      const rows = streamRows<{ g: number }>(pool, 'select g from generate_series(1, 5000) g', [], 1000);
      expect((await rows.next()).value).toHaveLength(1000);
      await stopServer();
      await expect(rows.next()).rejects.toThrow();
      await startServer();
      expect((await pool.query('select 1 as x')).rows).toEqual([{ x: 1 }]);
    } finally {
      if (!server) await startServer();
      await pool.end();
    }
  });

  it('exits non-zero (DB_GAVE_UP) once the database stays away past dbGiveUpAfterInS', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'hydrant-outage-giveup-'));
    const config = join(dir, 'runner.toml');
    writeFileSync(config, `dbUrl = "${url}"\nhydraDataDir = "${dir}"\nhttpListen = ""\ndbGiveUpAfterInS = 3\nshutdownGraceInS = 1\n`);
    const p = startCli(['serve', '--config', config]);
    try {
      await p.waitFor(/"msg":"runner running"/, 60_000);
      await stopServer();
      expect(await p.exited).toBe(1);
      expect(p.output()).toMatch(/"code":"DB_GAVE_UP"[^\n]*"msg":"giving up on the database; stopping"/);
    } finally {
      p.child.kill('SIGKILL');
      if (!server) await startServer();
      rmSync(dir, { recursive: true, force: true });
    }
  }, 120_000);

  it('exits non-zero (RUNNER_LOCK_LOST) when another runner took the lock while its connection was away', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'hydrant-outage-taken-'));
    const config = join(dir, 'runner.toml');
    writeFileSync(config, `dbUrl = "${url}"\nhydraDataDir = "${dir}"\nhttpListen = ""\nshutdownGraceInS = 1\n`);
    const p = startCli(['serve', '--config', config]);
    const pool = createPool(url, { max: 2 });
    const other = await pool.connect();
    try {
      await p.waitFor(/"msg":"runner running"/, 60_000);
      // Its lock connection dies; another session waits for the lock and gets it first.
      const taken = other.query("select pg_advisory_lock(hashtext('hydrant:queue-runner'))");
      await pool.query("select pg_terminate_backend(pid) from pg_stat_activity where application_name = 'hydrant-lock' and datname = current_database()");
      await taken;
      expect(await p.exited).toBe(1);
      expect(p.output()).toMatch(/"code":"RUNNER_LOCK_LOST"[^\n]*"msg":"another runner took the runner lock; stopping"/);
    } finally {
      p.child.kill('SIGKILL');
      other.release(true);
      await pool.end();
      rmSync(dir, { recursive: true, force: true });
    }
  }, 120_000);

  it('after an outage, aborts busy rows that are none of the live attempts and keeps those that are', async () => {
    const pool = createPool(url, { max: 2 });
    try {
      const jobset = await createJobset(pool, 'orphans', `j-${randomBytes(3).toString('hex')}`);
      const build = await queueBuild(pool, jobset, '/nix/store/00000000000000000000000000000000-x.drv');
      const start = (n: string) => withTransaction(pool, (c) => startStep(c, { buildId: build, drvPath: `/nix/store/${n}-x.drv`, system: 'x86_64-linux', machine: 'm', startTime: 1, busy: 30, type: 0, outputs: [] }));
      const live = await start('11111111111111111111111111111111');
      const orphan = await start('22222222222222222222222222222222');
      expect(await new PgSchedulerDb(pool).abortOrphans(5, [{ buildId: build, stepnr: live }])).toBeGreaterThanOrEqual(1);
      const rows = (await pool.query('select stepnr, busy, status, stoptime from buildsteps where build = $1 order by stepnr', [build])).rows;
      expect(rows).toEqual([
        { stepnr: live, busy: 30, status: null, stoptime: null },
        { stepnr: orphan, busy: 0, status: 3, stoptime: 5 },
      ]);
    } finally {
      await pool.end();
    }
  });
});
