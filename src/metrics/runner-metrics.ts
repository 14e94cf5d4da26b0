import type pg from 'pg';
import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client';
import type { QueueMonitor } from '../actors/queue-monitor.ts';
import type { Scheduler } from '../actors/scheduler.ts';
import type { WorkerPool } from '../workers/pool.ts';
import { registerHydraCompatMetrics } from './hydra-compat-metrics.ts';

export interface MetricsSources {
  scheduler(): Scheduler | null;
  monitor(): QueueMonitor | null;
  pool: WorkerPool;
  db: pg.Pool;
  uploads: { readonly paths: number; readonly bytes: number; readonly narBytes: number; readonly logs: number; readonly failures: number };
  /** Pings received per machine (the builder protocol). */
  pings(): ReadonlyMap<string, number>;
  /** NAR bytes sent to and received from builders, and their size on the wire. */
  transfers(): { readonly sentNarBytes: number; readonly sentWireBytes: number; readonly receivedNarBytes: number; readonly receivedWireBytes: number };
  readonly startedAt: number;
  /** The daemon's lifecycle state (standby, running, reconnecting, ...). */
  state?(): string;
  /** Backup buckets' totals (undefined: none configured, no backup metrics). */
  /** Each substituter's failures (each disabling it for the backoff period), look-ups that skipped it, and whether it is disabled now. */
  substituters?: () => readonly { readonly substituter: string; readonly failures: number; readonly skipped: number; readonly disabled: boolean }[];
  backups?: () => readonly { readonly target: string; readonly totals: { readonly builds: number; readonly paths: number; readonly bytes: number; readonly failures: number; readonly pending: number } }[];
}

export interface RunnerMetrics {
  readonly registry: Registry;
  /** The dispatcher's per-assignment hook. */
  observeDispatch(latencyMs: number, waitMs: number): void;
}

type Labels = Record<string, string>;

/**
 * A counter whose value lives elsewhere (a totals object): on each scrape it
 * is advanced by what the total grew since the last one, so it stays a
 * Prometheus counter (monotonic) without hooks on the hot paths.
 */
function mirroredCounter(registry: Registry, name: string, help: string, labelNames: string[], read: () => Iterable<[Labels, number]>): void {
  const last = new Map<string, number>();
  new Counter({
    name,
    help,
    labelNames,
    registers: [registry],
    collect() {
      for (const [labels, value] of read()) {
        const key = JSON.stringify(labels);
        const delta = value - (last.get(key) ?? 0);
        if (delta > 0) {
          this.inc(labels, delta);
          last.set(key, value);
        } else if (!last.has(key)) {
          this.inc(labels, 0);
          last.set(key, value);
        }
      }
    },
  });
}

/** A gauge recomputed on each scrape; label sets that vanished are dropped. */
function computedGauge(registry: Registry, name: string, help: string, labelNames: string[], read: () => Iterable<[Labels, number]>): void {
  new Gauge({
    name,
    help,
    labelNames,
    registers: [registry],
    collect() {
      this.reset();
      for (const [labels, value] of read()) this.set(labels, value);
    },
  });
}

const one = (v: number): [Labels, number][] => [[{}, v]];

/**
 * The runner's Prometheus metrics (`GET /metrics`). Most are read from the
 * scheduler's own totals at scrape time, so an unscraped runner pays nothing;
 * only dispatch latency is observed per assignment.
 */
export function createRunnerMetrics(src: MetricsSources): RunnerMetrics {
  const registry = new Registry();
  collectDefaultMetrics({ register: registry, prefix: 'hydrant_' }); // process, heap, event-loop lag
  // prom-client names three gauges `*_total`, which Prometheus reserves for counters (promtool
  // flags them); each is the sum over the `type` label of the gauge of the same name without it.
  for (const n of ['active_handles_total', 'active_requests_total', 'active_resources_total']) registry.removeSingleMetric(`hydrant_nodejs_${n}`);
  const s = () => src.scheduler();
  const counters = () => s()?.counters;
  const uptimeS = () => (Date.now() - src.startedAt) / 1000;

  mirroredCounter(registry, 'hydrant_queue_monitor_running_seconds_total', 'Time the queue monitor spent loading builds.', [], () => one((src.monitor()?.time.runningMs ?? 0) / 1000));
  mirroredCounter(registry, 'hydrant_queue_monitor_waiting_seconds_total', 'Time the queue monitor spent waiting for work.', [], () =>
    one(Math.max(0, uptimeS() - (src.monitor()?.time.runningMs ?? 0) / 1000)),
  );
  mirroredCounter(registry, 'hydrant_queue_monitor_passes_total', 'Queue monitor passes.', [], () => one(src.monitor()?.time.passes ?? 0));
  mirroredCounter(registry, 'hydrant_dispatcher_running_seconds_total', 'Time spent in dispatch rounds.', [], () => one((s()?.dispatcher.stats.roundMs ?? 0) / 1000));
  mirroredCounter(registry, 'hydrant_dispatcher_waiting_seconds_total', 'Time the dispatcher waited for events.', [], () =>
    one(Math.max(0, uptimeS() - (s()?.dispatcher.stats.roundMs ?? 0) / 1000)),
  );
  mirroredCounter(registry, 'hydrant_dispatcher_rounds_total', 'Dispatch rounds.', [], () => one(s()?.dispatcher.stats.rounds ?? 0));

  mirroredCounter(registry, 'hydrant_builds_loaded_total', 'Queued builds loaded from the database.', [], () => one(counters()?.buildsLoaded ?? 0));
  mirroredCounter(registry, 'hydrant_builds_finished_total', 'Builds finished, by outcome (cached builds included).', ['outcome'], () => {
    const c = counters();
    return [
      [{ outcome: 'succeeded' }, c?.buildsSucceeded ?? 0],
      [{ outcome: 'failed' }, c?.buildsFailed ?? 0],
    ];
  });
  mirroredCounter(registry, 'hydrant_builds_cached_total', 'Builds finished without building (outputs or failure already known).', [], () => one(counters()?.buildsCached ?? 0));
  mirroredCounter(registry, 'hydrant_steps_started_total', 'Step attempts handed to machines.', [], () => one(counters()?.stepsStarted ?? 0));
  mirroredCounter(registry, 'hydrant_steps_finished_total', 'Step attempts ended, by outcome.', ['outcome'], () => {
    const c = counters();
    return [
      [{ outcome: 'succeeded' }, c?.stepsSucceeded ?? 0],
      [{ outcome: 'failed' }, c?.stepsFailed ?? 0],
      [{ outcome: 'transient' }, c?.stepsTransient ?? 0],
      [{ outcome: 'unsupported' }, c?.stepsUnsupported ?? 0],
    ];
  });
  mirroredCounter(registry, 'hydrant_step_retries_total', 'Steps scheduled for another attempt.', [], () => one(counters()?.stepsRetried ?? 0));

  computedGauge(registry, 'hydrant_steps', 'Steps by state and system: runnable (queued for a machine), running, waiting for a retry.', ['state', 'system'], function* () {
    const sch = s();
    if (!sch) return;
    const by = new Map<string, number>();
    const add = (state: string, system: string, n: number) => by.set(`${state}\0${system}`, (by.get(`${state}\0${system}`) ?? 0) + n);
    for (const q of sch.dispatcher.platformQueues.values()) add('runnable', q.platform.system, q.live);
    for (const r of sch.running()) add('running', r.step.platform.system, 1);
    for (const st of sch.dispatcher.retryWaiting(Number.MAX_SAFE_INTEGER)) add('retry_wait', st.platform.system, 1);
    for (const [k, n] of by) {
      const [state, system] = k.split('\0') as [string, string];
      yield [{ state, system }, n];
    }
  });

  computedGauge(registry, 'hydrant_machine_jobs', 'Jobs running on each machine.', ['machine'], function* () {
    for (const m of s()?.dispatcher.machines.values() ?? []) yield [{ machine: m.id }, m.snapshot().jobs];
  });
  computedGauge(registry, 'hydrant_machine_max_jobs', 'Job slots of each machine.', ['machine'], function* () {
    for (const m of s()?.dispatcher.machines.values() ?? []) yield [{ machine: m.id }, m.snapshot().maxJobs];
  });
  mirroredCounter(registry, 'hydrant_machine_steps_total', 'Steps each machine finished, by outcome.', ['machine', 'outcome'], function* () {
    for (const [id, st] of s()?.machineStats ?? []) {
      yield [{ machine: id, outcome: 'succeeded' }, st.succeeded];
      yield [{ machine: id, outcome: 'failed' }, st.failed];
    }
  });
  mirroredCounter(registry, 'hydrant_machine_step_seconds_total', 'Wall time of the steps each machine finished.', ['machine'], function* () {
    for (const [id, st] of s()?.machineStats ?? []) yield [{ machine: id }, st.totalStepMs / 1000];
  });
  // The Rust runner's machine_total_step_build_time_ms, in seconds (promtool refuses `_ms` names).
  mirroredCounter(registry, 'hydrant_machine_step_build_seconds_total', "Build time (the step's start to stop on the builder) of the steps each machine finished.", ['machine'], function* () {
    for (const [id, st] of s()?.machineStats ?? []) yield [{ machine: id }, st.totalBuildMs / 1000];
  });
  mirroredCounter(registry, 'hydrant_machine_failures_total', 'Attempts lost to a machine fault.', ['machine'], function* () {
    for (const [id, st] of s()?.machineStats ?? []) yield [{ machine: id }, st.machineFailures];
  });
  mirroredCounter(registry, 'hydrant_machine_pings_total', 'Pings received from each builder.', ['machine'], function* () {
    for (const [id, n] of src.pings()) yield [{ machine: id }, n];
  });

  mirroredCounter(registry, 'hydrant_transfer_bytes_total', 'NARs moved to (sent) and from (received) builders: plain NAR bytes and bytes on the wire (zstd for large NARs).', ['direction', 'kind'], () => {
    const t = src.transfers();
    return [
      [{ direction: 'sent', kind: 'nar' }, t.sentNarBytes],
      [{ direction: 'sent', kind: 'wire' }, t.sentWireBytes],
      [{ direction: 'received', kind: 'nar' }, t.receivedNarBytes],
      [{ direction: 'received', kind: 'wire' }, t.receivedWireBytes],
    ];
  });
  mirroredCounter(registry, 'hydrant_uploads_total', 'Store paths uploaded to binary caches.', [], () => one(src.uploads.paths));
  mirroredCounter(registry, 'hydrant_upload_bytes_total', 'Compressed bytes written to binary caches.', [], () => one(src.uploads.bytes));
  mirroredCounter(registry, 'hydrant_upload_nar_bytes_total', 'NAR bytes uploaded (before compression).', [], () => one(src.uploads.narBytes));
  mirroredCounter(registry, 'hydrant_upload_logs_total', 'Build logs published to binary caches.', [], () => one(src.uploads.logs));
  mirroredCounter(registry, 'hydrant_upload_failures_total', 'Failed closure uploads (the step was retried).', [], () => one(src.uploads.failures));
  // Only with backup buckets configured: a family that can never move is not exposed.
  const subst = src.substituters;
  if (subst) {
    mirroredCounter(registry, 'hydrant_substituter_failures_total', 'Times a substituter failed and was skipped for the backoff period (substituterBackoffInS).', ['substituter'], () => subst().map((x): [Labels, number] => [{ substituter: x.substituter }, x.failures]));
    mirroredCounter(registry, 'hydrant_substituter_skipped_total', 'Narinfo look-ups that skipped a substituter in its backoff period.', ['substituter'], () => subst().map((x): [Labels, number] => [{ substituter: x.substituter }, x.skipped]));
    computedGauge(registry, 'hydrant_substituter_disabled', '1 while a substituter is skipped after a failure.', ['substituter'], () => subst().map((x): [Labels, number] => [{ substituter: x.substituter }, x.disabled ? 1 : 0]));
  }
  const backups = src.backups;
  if (backups) {
    mirroredCounter(registry, 'hydrant_backup_builds_total', 'Builds whose closure was copied to a backup bucket.', ['bucket'], () => backups().map((b): [Labels, number] => [{ bucket: b.target }, b.totals.builds]));
    mirroredCounter(registry, 'hydrant_backup_paths_total', 'Store paths uploaded to backup buckets.', ['bucket'], () => backups().map((b): [Labels, number] => [{ bucket: b.target }, b.totals.paths]));
    mirroredCounter(registry, 'hydrant_backup_bytes_total', 'Compressed bytes uploaded to backup buckets.', ['bucket'], () => backups().map((b): [Labels, number] => [{ bucket: b.target }, b.totals.bytes]));
    mirroredCounter(registry, 'hydrant_backup_failures_total', 'Failed backup attempts (each retried with backoff).', ['bucket'], () => backups().map((b): [Labels, number] => [{ bucket: b.target }, b.totals.failures]));
    computedGauge(registry, 'hydrant_backup_pending', 'Backups waiting in the durable queue, as last counted.', ['bucket'], () => backups().map((b): [Labels, number] => [{ bucket: b.target }, b.totals.pending]));
  }

  computedGauge(registry, 'hydrant_worker_pool_utilization', 'Share of the worker threads busy since start (0..1).', [], () => one(src.pool.stats().utilization));
  computedGauge(registry, 'hydrant_worker_pool_queue_length', 'Worker tasks waiting for a thread.', [], () => one(src.pool.stats().queueSize));
  computedGauge(registry, 'hydrant_worker_pool_in_flight', 'Worker tasks submitted and not settled.', [], () => one(src.pool.stats().inFlight));
  mirroredCounter(registry, 'hydrant_worker_pool_busy_seconds_total', 'Thread time spent on worker tasks.', [], () => one(src.pool.stats().busyThreadMs / 1000));
  mirroredCounter(registry, 'hydrant_worker_pool_tasks_total', 'Worker tasks finished.', [], () => one(src.pool.stats().completed));

  computedGauge(registry, 'hydrant_db_pool_connections', 'Database pool connections: total, idle, and clients waiting for one.', ['state'], () => [
    [{ state: 'total' }, src.db.totalCount],
    [{ state: 'idle' }, src.db.idleCount],
    [{ state: 'waiting' }, src.db.waitingCount],
  ]);

  computedGauge(registry, 'hydrant_db_pending_writes', 'Result writes waiting for the database or in flight (dispatch pauses at maxPendingDbWrites).', [], () => one(s()?.pendingWrites ?? 0));
  computedGauge(registry, 'hydrant_db_write_backpressure', 'Whether dispatch is held now because result writes reached maxPendingDbWrites (1) or not (0); it resumes at three quarters of it.', [], () => one(s()?.writePressure.held ? 1 : 0));
  mirroredCounter(registry, 'hydrant_db_write_backpressure_holds_total', 'How often dispatch was held because result writes reached maxPendingDbWrites.', [], () => one(s()?.writePressure.holds ?? 0));
  computedGauge(registry, 'hydrant_runner_state', "The runner's lifecycle state: 1 for the current one (standby: waiting for the active runner's lock).", ['state'], () =>
    ['starting', 'standby', 'running', 'reconnecting', 'draining', 'stopped'].map((st): [Labels, number] => [{ state: st }, src.state?.() === st ? 1 : 0]),
  );

  registerHydraCompatMetrics(registry, s);

  const latency = new Histogram({
    name: 'hydrant_dispatch_latency_seconds',
    help: "The runner's own dispatch delay: from a step being runnable with a machine free to its hand-over.",
    buckets: [0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5],
    registers: [registry],
  });
  const wait = new Histogram({
    name: 'hydrant_step_wait_seconds',
    help: 'How long steps waited from runnable to dispatch (includes waiting for a free machine).',
    buckets: [0.01, 0.1, 1, 10, 60, 300, 1800, 3600, 4 * 3600, 24 * 3600],
    registers: [registry],
  });
  return {
    registry,
    observeDispatch(latencyMs, waitMs) {
      latency.observe(latencyMs / 1000);
      wait.observe(waitMs / 1000);
    },
  };
}
