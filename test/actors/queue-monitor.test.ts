import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { LocalNixBuilder } from '../../src/builder/local-builder.ts';
import { QueueMonitor } from '../../src/actors/queue-monitor.ts';
import { Scheduler } from '../../src/actors/scheduler.ts';
import { HYDRA_CHANNELS } from '../../src/db/channels.ts';
import { NotificationListener } from '../../src/db/listener.ts';
import { PgSchedulerDb } from '../../src/db/scheduler-db.ts';
import { prepared } from '../../src/db/sql.ts';
import { LocalNixStore, parseInThread, type DerivationParser } from '../../src/nix/local-store.ts';
import { summarizeDerivation } from '../../src/nix/derivation-summary.ts';
import { WorkerPool } from '../../src/workers/pool.ts';
import { useTestDatabase } from '../helpers/db.ts';
import { createJobset, queueBuild } from '../helpers/hydra-rows.ts';
import { instantiate, MK_DRV, runNixLines } from '../helpers/nix.ts';
import { machineRecord, quietLog, TEST_CONFIG, waitFor } from '../helpers/runtime.ts';

/**
 * The queue monitor through its real parts: a database with Hydra's schema,
 * the LISTEN connection, the local Nix store and (where builds must end) a
 * local Nix builder.
 */
describe('queue monitor', () => {
  const db = useTestDatabase();
  let listener: NotificationListener;
  let jobset: number;
  const nonce = randomBytes(4).toString('hex');
  const dataDir = mkdtempSync(join(tmpdir(), 'hydrant-queue-monitor-'));
  const planted: string[] = [];
  const clients: pg.Client[] = [];

  beforeAll(async () => {
    jobset = await createJobset(db.pool, 'qm', 'main');
    listener = new NotificationListener({ url: db.url, channels: HYDRA_CHANNELS });
    await listener.start();
  });
  afterAll(async () => {
    await listener.stop();
    for (const c of clients) await c.end().catch(() => {});
    for (const p of planted) rmSync(p, { force: true });
  });

  /** A scheduler and its queue monitor, as src/daemon/runner-runtime.ts composes them. */
  function start(store: LocalNixStore, over: { retryDelayMs?: number } = {}) {
    const sdb = new PgSchedulerDb(db.pool);
    // Loaded builds stay held here although no machine can build them (not failed as unsupported).
    const scheduler = new Scheduler({ config: { ...TEST_CONFIG, maxUnsupportedTimeInS: 3600 }, db: sdb, store, log: quietLog });
    // Transient failures (a busy Nix database on a shared machine) are retried soon.
    const monitor = new QueueMonitor({
      db: sdb, scheduler, listener, log: quietLog, pollIntervalS: TEST_CONFIG.queueTriggerTimerInS, retryDelayMs: 100, ...over,
    });
    return {
      scheduler,
      monitor,
      initialLoad: monitor.start(),
      async stop() {
        await monitor.stop();
        await scheduler.drain(0);
      },
    };
  }

  /** A real NOTIFY builds_added, and the monitor pass it causes. */
  async function hint(monitor: QueueMonitor): Promise<void> {
    const passes = monitor.time.passes;
    await db.pool.query('notify builds_added');
    await waitFor(() => monitor.time.passes > passes, 10_000, 'a pass after builds_added');
  }

  it('aborts each build whose derivation cannot be loaded, once, with its cause, and reads nothing outside the store', async () => {
    // Files Nix never makes (it refuses to register a .drv it cannot parse
    // and derivation names ending in .drv), planted as a local root could
    // (so this test needs write access to /nix/store, as root has). They
    // exist only while the queue is first loaded: other checkouts' tests that
    // read every *.drv file in the store would trip over them.
    const garbage = `/nix/store/${'0'.repeat(31)}1-garbage-${nonce}.drv`;
    const link = `/nix/store/${'0'.repeat(31)}2-link-${nonce}.drv`;
    const fifo = `/nix/store/${'0'.repeat(31)}7-fifo-${nonce}.drv`;
    const notDrv = JSON.parse((await runNixLines('nix-instantiate', ['--eval', '--read-write-mode', '-E', `builtins.toFile "notes-${nonce}.txt" "hello"`]))[0]!) as string;
    const [good] = await instantiate(`let ${MK_DRV} in { g = mk { name = "good-${nonce}"; script = "echo > $out"; }; }`, ['g']);
    const hostile: Record<string, [string, RegExp]> = {
      missing: [`/nix/store/${'0'.repeat(31)}3-missing-${nonce}.drv`, /derivation missing: not valid in the local Nix store/],
      garbage: [garbage, /derivation: expected .* at offset 0/],
      notDrv: [notDrv, /is not a derivation \(its name does not end in \.drv\)/],
      passwd: ['/etc/passwd', /'\/etc\/passwd' is not in \/nix\/store/],
      traversal: ['/nix/store/../../etc/shadow.drv', /is not a top-level store path/],
      symlink: [link, /is not a regular file/],
      fifo: [fifo, /is not a regular file/],
    };
    const ids: Record<string, number> = {};
    for (const [name, [drv]] of Object.entries(hostile)) ids[name] = await queueBuild(db.pool, jobset, drv, name);
    const goodId = await queueBuild(db.pool, jobset, good!, 'good');

    const finished = new Set<string>();
    const watch = new pg.Client({ connectionString: db.url });
    watch.on('error', () => {});
    clients.push(watch);
    await watch.connect();
    watch.on('notification', (n) => n.channel === 'build_finished' && finished.add(n.payload ?? ''));
    await watch.query('listen build_finished');

    planted.push(garbage, link, fifo);
    writeFileSync(garbage, 'garbage');
    symlinkSync('/etc/shadow', link);
    execFileSync('mkfifo', [fifo]);
    const runtime = start(new LocalNixStore());
    try {
      await runtime.initialLoad.finally(() => planted.splice(0).forEach((p) => rmSync(p, { force: true })));
      // A loadable build beside them is loaded as usual (after a retry if the store hiccuped).
      await waitFor(() => runtime.scheduler.graph.builds.has(goodId), 10_000, 'the loadable build to be held');
      // Rescans, a hint and a restart find nothing more to do.
      await runtime.monitor.request('scan');
      await hint(runtime.monitor);
      await runtime.monitor.request('added', 'scan');
    } finally {
      await runtime.stop();
    }
    const again = start(new LocalNixStore());
    await again.initialLoad.finally(() => again.stop());

    for (const [name, [drv, cause]] of Object.entries(hostile)) {
      const id = ids[name]!;
      const b = (await db.pool.query('select finished, buildstatus, starttime, stoptime, notificationpendingsince from builds where id = $1', [id])).rows[0];
      expect(b, name).toMatchObject({ finished: 1, buildstatus: 3 });
      expect(b.starttime, name).toBeGreaterThan(0);
      expect(b.stoptime, name).toBe(b.starttime);
      expect(b.notificationpendingsince, name).toBe(b.stoptime);
      const steps = (await db.pool.query('select stepnr, drvpath, busy, status, errormsg from buildsteps where build = $1', [id])).rows;
      expect(steps, name).toEqual([{ stepnr: 1, drvpath: drv, busy: 0, status: 3, errormsg: expect.stringMatching(cause) }]);
      expect(steps[0].errormsg, name).toMatch(/^could not load the derivation: /);
    }
    // Once: the rescans, the hint and the restart aborted nothing more.
    expect(runtime.monitor.unloadableBuilds).toBe(Object.keys(hostile).length);
    expect(again.monitor.unloadableBuilds).toBe(0);
    await waitFor(() => Object.values(ids).every((id) => finished.has(String(id))), 10_000, 'build_finished for each aborted build');
    expect((await db.pool.query('select finished from builds where id = $1', [goodId])).rows[0].finished).toBe(0);
    // Out of the way of the next tests (no machine here builds it).
    await db.pool.query('update builds set finished = 1, buildstatus = 4, starttime = 1, stoptime = 1 where id = $1', [goodId]);
  });

  it('aborts a build one of whose input derivations is missing, and keeps no step for it', async () => {
    // A .drv Nix would not register (an input is missing), planted beside a real input.
    const [input] = await instantiate(`let ${MK_DRV} in { i = mk { name = "input-${nonce}"; script = "echo > $out"; }; }`, ['i']);
    const missing = `/nix/store/${'0'.repeat(31)}4-gone-${nonce}.drv`;
    const out = `/nix/store/${'0'.repeat(31)}5-top-${nonce}`;
    const top = `/nix/store/${'0'.repeat(31)}6-top-${nonce}.drv`;
    const id = await queueBuild(db.pool, jobset, top, 'top');
    planted.push(top);
    writeFileSync(top, `Derive([("out","${out}","","")],[("${input}",["out"]),("${missing}",["out"])],[],"x86_64-linux","/bin/sh",[],[("out","${out}")])`);
    const runtime = start(new LocalNixStore());
    try {
      await runtime.initialLoad.finally(() => planted.splice(0).forEach((p) => rmSync(p, { force: true })));
      const b = (await db.pool.query('select finished, buildstatus from builds where id = $1', [id])).rows[0];
      expect(b).toEqual({ finished: 1, buildstatus: 3 });
      const steps = (await db.pool.query('select errormsg from buildsteps where build = $1', [id])).rows;
      expect(steps).toEqual([{ errormsg: expect.stringContaining(missing) }]);
      // The input's step, created for this build alone, is not left held: once a
      // build of the input itself has been loaded and cancelled, the graph is empty.
      const inputBuild = await queueBuild(db.pool, jobset, input!, 'input');
      await runtime.monitor.request('added');
      expect(runtime.scheduler.graph.builds.has(inputBuild)).toBe(true);
      await db.pool.query('update builds set finished = 1, buildstatus = 4, starttime = 1, stoptime = 1 where id = $1', [inputBuild]);
      await runtime.monitor.request('scan');
      expect(runtime.scheduler.graph.steps.has(input!)).toBe(false);
    } finally {
      await runtime.stop();
    }
  });

  it('keeps a build queued while its derivation cannot be parsed for a transient reason (worker pool closed), and loads it after', async () => {
    const [drv] = await instantiate(`let ${MK_DRV} in { t = mk { name = "transient-${nonce}"; script = "echo > $out"; }; }`, ['t']);
    const closed = new WorkerPool({ threads: 1 });
    await closed.close();
    let parse: DerivationParser = async (p, bytes) => summarizeDerivation(p, await closed.parseDerivation(bytes));
    const store = new LocalNixStore((p, bytes) => parse(p, bytes));
    const runtime = start(store, { retryDelayMs: 20 });
    try {
      await runtime.initialLoad;
      const id = await queueBuild(db.pool, jobset, drv!, 'transient');
      await hint(runtime.monitor);
      expect(runtime.scheduler.graph.builds.has(id)).toBe(false);
      expect((await db.pool.query('select finished from builds where id = $1', [id])).rows[0].finished).toBe(0);
      expect((await db.pool.query('select count(*)::int n from buildsteps where build = $1', [id])).rows[0].n).toBe(0);
      // The pool is back: a retry loads the build, with no hint needed.
      parse = parseInThread;
      await waitFor(() => runtime.scheduler.graph.builds.has(id), 10_000, 'the build to load after the transient failure');
      expect(runtime.monitor.unloadableBuilds).toBe(0);
      expect((await db.pool.query('select finished from builds where id = $1', [id])).rows[0].finished).toBe(0);
    } finally {
      await runtime.stop();
    }
  });

  describe('builds committed out of id order', () => {
    /** Queues a build in an open transaction of its own, as an evaluation does; commits on request. */
    async function openEvaluation(drv: string, job: string): Promise<{ id: number; commit(payload: string | null): Promise<void> }> {
      const c = new pg.Client({ connectionString: db.url });
      c.on('error', () => {});
      clients.push(c);
      await c.connect();
      await c.query('begin');
      const outputs = (await new LocalNixStore().readDerivation(drv)).outputs;
      const { rows } = await c.query<{ id: number }>(prepared('submit/insert-build'), [
        Math.floor(Date.now() / 1000), jobset, job, job, null, drv, 'x86_64-linux', null, null, null, 3600, 36000, 0, 100,
      ]);
      const id = rows[0]!.id;
      await c.query(prepared('submit/insert-build-outputs'), [id, outputs.map((o) => o.name), outputs.map((o) => o.path)]);
      return {
        id,
        async commit(payload) {
          // Hydra's insert trigger and other tools send no payload; Hydra's evaluator (and hydrant submit) its lowest new build id.
          if (payload === null) await c.query('notify builds_added');
          else await c.query("select pg_notify('builds_added', $1)", [payload]);
          await c.query('commit');
        },
      };
    }

    const finishedOk = async (id: number) =>
      (await db.pool.query('select finished, buildstatus from builds where id = $1', [id])).rows[0]?.buildstatus === 0;

    for (const style of ['without a payload', "with the lowest new id as payload (Hydra's evaluator, hydrant submit)"]) {
      it(`builds both when the lower id commits last, hinted ${style}`, async () => {
        const tag = `${nonce}-${style.length}`;
        const [lowDrv, highDrv] = await instantiate(`let ${MK_DRV} in {
          low = mk { name = "low-${tag}"; script = "echo low > $out"; };
          high = mk { name = "high-${tag}"; script = "echo high > $out"; };
        }`, ['low', 'high']);
        const runtime = start(new LocalNixStore());
        runtime.scheduler.addMachine(machineRecord('local', { maxJobs: 2 }), new LocalNixBuilder({ hydraDataDir: dataDir }));
        try {
          await runtime.initialLoad;
          const low = await openEvaluation(lowDrv!, 'low');
          const high = await openEvaluation(highDrv!, 'high');
          expect(low.id).toBeLessThan(high.id);
          const payload = (id: number) => (style.startsWith('without') ? null : String(id));
          await high.commit(payload(high.id));
          // The monitor has seen the higher id before the lower one commits.
          await waitFor(() => finishedOk(high.id), 30_000, 'the higher build to finish');
          await low.commit(payload(low.id));
          await waitFor(() => finishedOk(low.id), 30_000, 'the lower build, committed last, to finish');
        } finally {
          await runtime.stop();
        }
      });
    }
  });
});
