import { Counter, Gauge, type Registry } from 'prom-client';
import type { Scheduler } from '../actors/scheduler.ts';
import { machinesInUse, queueStatsBySystem, unsupportedSteps } from '../status/queue-runner-stats.ts';

type Labels = Record<string, string>;

/**
 * The names Hydra's Rust runner exports (`state/metrics.rs`) for quantities
 * Hydrant has, so dashboards made for it keep working. Each has the Rust
 * runner's meaning; /status's `queueRunner` reads the same sources.
 *
 * `promtool check metrics` must accept the whole of /metrics, which rules out
 * some of the Rust names as they are: a Rust counter without the `_total`
 * suffix is served here under its name as a gauge (the samples, hence every
 * query, are the same; only the TYPE line differs), and the names promtool
 * rejects whatever their type (`_ms` units, the gauge `machines_total`) are
 * not served — docs/OPERATIONS.md lists them with the hydrant_ metric to use.
 */
export function registerHydraCompatMetrics(registry: Registry, scheduler: () => Scheduler | null): void {
  const gauge = (name: string, help: string, read: (s: Scheduler) => number) =>
    new Gauge({
      name,
      help,
      registers: [registry],
      collect() {
        const s = scheduler();
        this.set(s ? read(s) : 0);
      },
    });
  const gaugeVec = (name: string, help: string, label: string, read: (s: Scheduler) => Iterable<[string, number]>) =>
    new Gauge({
      name,
      help,
      labelNames: [label],
      registers: [registry],
      collect() {
        this.reset();
        const s = scheduler();
        if (s) for (const [l, v] of read(s)) this.set({ [label]: l } as Labels, v);
      },
    });

  // Rust gauges.
  gauge('hydraqueuerunner_builds_unfinished', 'Number of unfinished builds in the queue', (s) => s.graph.builds.size);
  gauge('hydraqueuerunner_steps_building', 'Number of build steps currently being built', (s) => s.activeJobs);
  gauge('hydraqueuerunner_steps_runnable', 'Number of build steps that are ready to run', (s) => s.dispatcher.stats.runnable);
  gauge('hydraqueuerunner_steps_unfinished', 'Number of unfinished build steps', (s) => s.graph.steps.size);
  gauge('hydraqueuerunner_steps_unsupported', 'Number of unsupported build steps', unsupportedSteps);
  gauge('hydraqueuerunner_steps_max_retries', 'Maximum number of retries allowed for build steps', (s) => s.counters.maxTries);
  gauge('hydraqueuerunner_machines_in_use', 'Number of machines currently in use for building', machinesInUse);
  gaugeVec('hydraqueuerunner_machine_type_runnable', 'Number of runnable build steps per machine type', 'machine_type', (s) =>
    Object.entries(queueStatsBySystem(s)).map(([t, q]) => [t, q.totalRunnable]),
  );
  gaugeVec('hydraqueuerunner_machine_type_running', 'Number of running build steps per machine type', 'machine_type', (s) =>
    Object.entries(queueStatsBySystem(s)).map(([t, q]) => [t, q.activeRunnable]),
  );
  gaugeVec('hydraqueuerunner_machine_current_jobs', 'Number of currently running jobs on each machine', 'hostname', (s) =>
    [...s.dispatcher.machines.values()].map((m) => [m.id, m.jobs.size]),
  );
  gaugeVec('hydraqueuerunner_machine_steps_done', 'Total number of steps completed by each machine', 'hostname', (s) =>
    [...s.machineStats].map(([id, st]) => [id, st.stepsDone]),
  );
  gaugeVec('hydraqueuerunner_machine_consecutive_failures', 'Number of consecutive failures for each machine', 'hostname', (s) =>
    [...s.dispatcher.machines.values()].map((m) => [m.id, m.snapshot().failures]),
  );

  // Rust counters named without `_total`: same name, gauge type (see above).
  gauge('hydraqueuerunner_builds_read', 'Number of builds read from database', (s) => s.counters.buildsLoaded);
  gauge('hydraqueuerunner_builds_finished', 'Number of finished builds in the queue', (s) => s.counters.buildsFinished);
  gauge('hydraqueuerunner_builds_succeeded', 'Number of successful builds in the queue', (s) => s.counters.buildsSucceeded);
  gauge('hydraqueuerunner_builds_failed', 'Number of failed builds in the queue', (s) => s.counters.buildsFailed);
  gauge('hydraqueuerunner_steps_started', 'Number of build steps that have been started', (s) => s.counters.stepsStarted);
  gauge('hydraqueuerunner_steps_finished', 'Number of build steps that have been completed', (s) => s.counters.stepsFinished);
  gauge('hydraqueuerunner_steps_retries', 'Number of retries for build steps', (s) => s.counters.stepsRetried);
  gauge('hydraqueuerunner_steps_unsupported_aborted', 'Number of unsupported build steps that were aborted', (s) => s.counters.stepsUnsupported);
  gauge('hydraqueuerunner_monitor_checks', 'Number of times the queue monitor has been woken up', (s) => s.counters.queueWakeups);
  gauge('hydraqueuerunner_dispatch_wakeup', 'Number of times the dispatcher has been woken up', (s) => s.dispatcher.stats.rounds);

  // A Rust counter with the suffix: a counter here too, advanced by what the total grew.
  let loaded = 0;
  new Counter({
    name: 'hydraqueuerunner_queue_build_loads_total',
    help: 'Number of builds loaded',
    registers: [registry],
    collect() {
      const now = scheduler()?.counters.buildsLoaded ?? loaded;
      if (now > loaded) this.inc(now - loaded);
      loaded = Math.max(loaded, now);
    },
  });
}
