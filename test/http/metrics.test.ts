import { randomBytes } from 'node:crypto';
import { mkdirSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { createRunnerMetrics } from '../../src/metrics/runner-metrics.ts';
import { WorkerPool } from '../../src/workers/pool.ts';
import { generateKey } from '../cache/fixtures.ts';
import { runCli } from '../helpers/cli.ts';
import { useInProcessRunner } from '../helpers/in-process-runner.ts';
import { MK_DRV } from '../helpers/nix.ts';
import { waitFor } from '../helpers/runtime.ts';
import { movedFamilies, parseMetrics, promtoolCheck } from './prometheus.ts';

describe('Prometheus metrics', () => {
  const { db, dir, start } = useInProcessRunner('metrics');

  it('every hydrant_ metric moves while a runner with real builders builds, fails, retries and uploads', async () => {
    const key = await generateKey(dir, 'metrics-1');
    const cacheDir = join(dir, 'cache');
    const runner = await start({
      remoteStoreAddr: [`file://${cacheDir}?compression=zstd&secret-key=${key.secretFile}`],
      retryInterval: 0.5, retryBackoff: 1, maxUnsupportedTimeInS: 1, builderGraceInS: 0, builderPingTimeoutInS: 1, workerThreads: 1,
    });
    const daemon = runner.daemon;
    const base = runner.url;
    let lastText = '';
    const scrape = async () => {
      const r = await fetch(`${base}/metrics`);
      expect(r.headers.get('content-type')).toMatch(/^text\/plain/);
      lastText = await r.text();
      return parseMetrics(lastText);
    };
    const builder = (id: string) => runner.builder(id);
    const first = scrape();
    const scrapes = [await first];
    const b1 = builder('b1');
    await waitFor(async () => ((await scrape()).samples.get('hydrant_machine_max_jobs{machine="b1"}') ?? 0) === 1, 30_000, 'b1 to join');

    // Uploads fail until the cache is repaired: its nar/ directory is a file.
    rmSync(join(cacheDir, 'nar'), { recursive: true });
    writeFileSync(join(cacheDir, 'nar'), '');
    const nonce = randomBytes(4).toString('hex');
    const file = join(dir, 'release.nix');
    writeFileSync(file, `{ }: let ${MK_DRV} in {
      ok = mk { name = "ok-${nonce}"; script = "echo building ok; echo ok > $out"; };
      broken = mk { name = "broken-${nonce}"; script = "exit 1"; };
      elsewhere = mk { name = "elsewhere-${nonce}"; script = "echo > $out"; extra = { system = "riscv64-linux"; }; };
    }`);
    expect((await runCli(['submit', '--db-url', db.url, '--project', 'm', '--jobset', 'main', '--create', '--file', file])).code).toBe(0);
    await waitFor(async () => ((await scrape()).samples.get('hydrant_upload_failures_total') ?? 0) > 0, 60_000, 'an upload to fail');
    rmSync(join(cacheDir, 'nar'));
    mkdirSync(join(cacheDir, 'nar'));
    await waitFor(async () => (await db.pool.query('select count(*)::int n from builds where finished = 0')).rows[0].n === 0, 60_000, 'the first builds');
    scrapes.push(await scrape());

    // A slow build on b1, held until b1 is gone whatever the load: b1 dies
    // mid-build (a machine failure); b2 takes the retry once `go` exists.
    // okAgain is ok's derivation under another job name: a cached build.
    const go = join(dir, 'go');
    writeFileSync(file, `{ }: let ${MK_DRV} in {
      slow = mk { name = "slow-${nonce}"; script = "while [ ! -e ${go} ]; do /bin/sleep 0.1; done; echo > $out"; };
      okAgain = mk { name = "ok-${nonce}"; script = "echo building ok; echo ok > $out"; };
    }`);
    expect((await runCli(['submit', '--db-url', db.url, '--project', 'm', '--jobset', 'main', '--file', file])).code).toBe(0);
    await waitFor(async () => ((await scrape()).samples.get('hydrant_machine_jobs{machine="b1"}') ?? 0) === 1, 30_000, 'slow to run on b1');
    scrapes.push(await scrape());
    builder('b2'); // (before b1 is gone: a step with no capable machine fails as unsupported after 1 s here)
    await waitFor(async () => ((await scrape()).samples.get('hydrant_machine_max_jobs{machine="b2"}') ?? 0) === 1, 30_000, 'b2 to join');
    b1.child.kill('SIGKILL');
    await waitFor(async () => ((await scrape()).samples.get('hydrant_machine_failures_total{machine="b1"}') ?? 0) > 0, 30_000, 'b1 to be lost');
    writeFileSync(go, '');
    await waitFor(async () => (await db.pool.query('select count(*)::int n from builds where finished = 0')).rows[0].n === 0, 60_000, 'slow');
    await daemon.runtime!.scheduler.settle(); // the totals follow the rows' commit
    scrapes.push(await scrape());

    const last = scrapes[scrapes.length - 1]!;
    // Prometheus's own linter finds nothing in the exposition (every family and label set present).
    expect(await promtoolCheck(lastText)).toEqual({ code: 0, report: '' });
    const ours = [...last.types.keys()].filter((n) => n.startsWith('hydrant_') && !n.startsWith('hydrant_process_') && !n.startsWith('hydrant_nodejs_'));
    // Gauges of the worker pool's queue and the database pool's waiters move only under load: checked below.
    // Pending writes and the lifecycle state move in a database outage: test/db/outage.test.ts checks them.
    // Write backpressure moves when results outrun the database: test/actors/write-backpressure.test.ts, `bench soak`.
    // A failing substituter's counts move only with substituters set (this runner has none): test/cache/substituter-backoff.test.ts.
    const underLoad = new Set([
      'hydrant_worker_pool_queue_length', 'hydrant_worker_pool_in_flight', 'hydrant_db_pool_connections', 'hydrant_db_pending_writes', 'hydrant_runner_state',
      'hydrant_db_write_backpressure', 'hydrant_db_write_backpressure_holds_total',
      'hydrant_substituter_failures_total', 'hydrant_substituter_skipped_total', 'hydrant_substituter_disabled',
    ]);
    const moved = movedFamilies(scrapes);
    expect(ours.filter((n) => !underLoad.has(n) && !moved.has(n))).toEqual([]);
    expect(ours.length).toBeGreaterThan(30);
    expect(last.types.get('hydrant_nodejs_eventloop_lag_seconds')).toBe('gauge');
    // Values agree with what happened.
    expect(last.samples.get('hydrant_builds_finished_total{outcome="succeeded"}')).toBe(3);
    expect(last.samples.get('hydrant_builds_cached_total')).toBe(1);
    expect(last.samples.get('hydrant_builds_finished_total{outcome="failed"}')).toBe(2);
    expect(last.samples.get('hydrant_steps_finished_total{outcome="unsupported"}')).toBe(1);
    expect(last.samples.get('hydrant_steps_finished_total{outcome="failed"}')).toBe(1);
    expect(last.samples.get('hydrant_machine_steps_total{machine="b2",outcome="succeeded"}')).toBe(1);
    expect(last.samples.get('hydrant_uploads_total')).toBeGreaterThanOrEqual(2);
    expect(last.samples.get('hydrant_dispatch_latency_seconds_count')).toBe(last.samples.get('hydrant_steps_started_total'));
    expect(last.samples.get('hydrant_machine_pings_total{machine="b2"}')).toBeGreaterThan(0);
    // The build time each machine's steps took, in seconds (the Rust runner's machine_total_step_build_time_ms / 1000).
    expect(last.samples.get('hydrant_machine_step_build_seconds_total{machine="b2"}')).toBeGreaterThanOrEqual(0);
  }, 240_000);

  it('promtool reports what it finds: a gauge named like a counter fails the check', async () => {
    const bad = await promtoolCheck('# HELP x_total A gauge.\n# TYPE x_total gauge\nx_total 1\n');
    expect(bad.code).not.toBe(0);
    expect(bad.report).toContain('x_total non-counter metrics should not have "_total" suffix');
  });

  it('worker-pool and database-pool gauges follow load', async () => {
    const pool = new WorkerPool({ threads: 1 });
    const dbPool = db.pool;
    const metrics = createRunnerMetrics({
      scheduler: () => null, monitor: () => null, pool, db: dbPool, uploads: { paths: 0, bytes: 0, narBytes: 0, logs: 0, failures: 0 }, pings: () => new Map(),
      transfers: () => ({ sentNarBytes: 0, sentWireBytes: 0, receivedNarBytes: 0, receivedWireBytes: 0 }), startedAt: Date.now(),
    });
    const idle = parseMetrics(await metrics.registry.metrics());
    const tasks = Array.from({ length: 5 }, () => pool.compress(Buffer.alloc(2 << 20, 7), 'xz'));
    const queries = Array.from({ length: 40 }, () => dbPool.query('select pg_sleep(0.2)'));
    const busy = parseMetrics(await metrics.registry.metrics());
    await Promise.all([...tasks, ...queries]);
    expect(busy.samples.get('hydrant_worker_pool_queue_length')).toBeGreaterThan(0);
    expect(busy.samples.get('hydrant_worker_pool_in_flight')).toBe(5);
    expect(busy.samples.get('hydrant_db_pool_connections{state="waiting"}')).toBeGreaterThan(0);
    expect(idle.samples.get('hydrant_worker_pool_in_flight')).toBe(0);
    await pool.close();
  }, 60_000);
});
