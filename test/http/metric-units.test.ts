import { afterAll, describe, expect, it } from 'vitest';
import { createRunnerMetrics } from '../../src/metrics/runner-metrics.ts';
import { provisionerMetrics } from '../../src/provision/status-server.ts';
import { WorkerPool } from '../../src/workers/pool.ts';
import { useTestDatabase } from '../helpers/db.ts';
import { parseMetrics, promtoolCheck } from './prometheus.ts';

/**
 * Hydra's Rust queue runner's metrics whose names carry milliseconds
 * (subprojects/hydra-queue-runner/src/state/metrics.rs). promtool rejects
 * any name with `_ms` in it, so none is served under that name;
 * docs/OPERATIONS.md gives the seconds metric to read instead.
 */
const RUST_MS_NAMES = [
  'hydraqueuerunner_builds_read_time_ms',
  'hydraqueuerunner_dispatch_time_ms',
  'hydraqueuerunner_sort_duration_ms_total',
  'hydraqueuerunner_steps_avg_total_time_ms',
  'hydraqueuerunner_steps_avg_import_time_ms',
  'hydraqueuerunner_steps_avg_build_time_ms',
  'hydraqueuerunner_steps_avg_upload_time_ms',
  'hydraqueuerunner_steps_total_time_ms',
  'hydraqueuerunner_steps_total_import_time_ms',
  'hydraqueuerunner_steps_total_build_time_ms',
  'hydraqueuerunner_steps_total_upload_time_ms',
  'hydraqueuerunner_machine_total_step_time_ms',
  'hydraqueuerunner_machine_total_step_import_time_ms',
  'hydraqueuerunner_machine_total_step_build_time_ms',
  'hydraqueuerunner_machine_total_step_upload_time_ms',
  'hydraqueuerunner_store_nar_write_compression_time_ms',
  'hydraqueuerunner_s3_put_time_ms',
  'hydraqueuerunner_s3_get_time_ms',
];

// A unit other than a base one (seconds, bytes), abbreviated or not, as a word of the name.
const NON_BASE_UNIT = /(^|_)(ms|us|ns|millis|milliseconds?|microseconds?|nanoseconds?|minutes?|hours?|days?|kb|mb|gb|kib|mib|gib|kilobytes?|megabytes?|gigabytes?|percent)(_|$)/;

describe('metric names and units', () => {
  const db = useTestDatabase();
  const pool = new WorkerPool({ threads: 1 });
  afterAll(async () => {
    await pool.close();
  });

  it("every family of /metrics is in base units and promtool finds nothing, with no name left out for it but the Rust runner's _ms ones", async () => {
    const metrics = createRunnerMetrics({
      scheduler: () => null, monitor: () => null, pool, db: db.pool, uploads: { paths: 0, bytes: 0, narBytes: 0, logs: 0, failures: 0 }, pings: () => new Map([['b1', 3]]),
      transfers: () => ({ sentNarBytes: 0, sentWireBytes: 0, receivedNarBytes: 0, receivedWireBytes: 0 }), startedAt: Date.now(), state: () => 'running',
      backups: () => [{ target: 's3://bucket', totals: { builds: 1, paths: 2, bytes: 3, failures: 0, pending: 1 } }],
    });
    metrics.observeDispatch(1500, 250);
    const text = await metrics.registry.metrics();
    expect(await promtoolCheck(text)).toEqual({ code: 0, report: '' });
    const { types, samples } = parseMetrics(text);
    const families = [...types.keys()];
    expect(families.filter((n) => NON_BASE_UNIT.test(n))).toEqual([]);
    expect(families.filter((n) => RUST_MS_NAMES.includes(n))).toEqual([]);
    // Durations are observed in milliseconds and exposed in seconds.
    expect(samples.get('hydrant_dispatch_latency_seconds_sum')).toBe(1.5);
    expect(samples.get('hydrant_step_wait_seconds_sum')).toBe(0.25);
    expect(families.filter((n) => n.startsWith('hydrant_') && /seconds/.test(n)).length).toBeGreaterThanOrEqual(8);
  });

  it("the provisioner's /metrics passes promtool too", async () => {
    const text = provisionerMetrics({
      status: 'ok',
      types: { 'x86_64-linux': { runnable: 3, wanted: 2, running: 1, existing: 1 } },
      machines: [],
      counters: { created: 1, started: 0, stopped: 0, destroyed: 0, failed: 1 },
    } as Parameters<typeof provisionerMetrics>[0]);
    expect(await promtoolCheck(text)).toEqual({ code: 0, report: '' });
    expect([...parseMetrics(text).types.keys()].filter((n) => NON_BASE_UNIT.test(n))).toEqual([]);
  });

  it('promtool rejects a name in milliseconds, so the rule above is the one it applies', async () => {
    const r = await promtoolCheck('# HELP x_time_ms A duration.\n# TYPE x_time_ms gauge\nx_time_ms 1\n');
    expect(r.code).not.toBe(0);
    expect(r.report).toContain('x_time_ms metric names should not contain abbreviated units');
  });
});
