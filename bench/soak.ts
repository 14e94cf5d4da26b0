/**
 * Soak benchmark: a queue of builds run to the end through simulated
 * builders that report faster than the real (embedded) PostgreSQL can take
 * the results. Samples the runner's memory and its pending result writes as
 * builds finish, then checks every row landed. Prints one JSON object.
 */
import { EventEmitter } from 'node:events';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { DerivationSummary } from '../src/actors/model.ts';
import { startRunnerRuntime } from '../src/daemon/runner-runtime.ts';
import { startEmbeddedPostgres } from '../src/db/embedded.ts';
import { createPool } from '../src/db/pool.ts';
import { PgSchedulerDb } from '../src/db/scheduler-db.ts';
import { ensureSchema } from '../src/db/schema.ts';
import { MemoryStore } from '../test/sim/memory-store.ts';
import { SimulatedBuilder } from '../test/sim/simulated-builder.ts';
import { syntheticDag } from '../test/sim/synthetic-dag.ts';
import { createLogger } from '../src/util/logger.ts';
import { simMachine, settledRss } from './sim-fleet.ts';
import { benchOptions, log, median, round } from './common.ts';

export const describe = 'run a queue to the end through simulated builders faster than PostgreSQL: memory, pending writes, backpressure, nothing lost';

/** Each read returns a fresh copy, as parsing a .drv would, so the runner's memory is counted fairly. */
class CopyingStore extends MemoryStore {
  override async readDerivation(drvPath: string): Promise<DerivationSummary> {
    const d = await super.readDerivation(drvPath);
    return { ...d, outputs: d.outputs.map((o) => ({ ...o })), inputDrvs: new Map(d.inputDrvs), requiredFeatures: [...d.requiredFeatures] };
  }
}

interface Sample {
  /** Seconds since the machines joined. */
  t: number;
  stepsFinished: number;
  stepsHeld: number;
  buildsLeft: number;
  rssMB: number;
  heapMB: number;
  pendingWrites: number;
  backpressure: boolean;
}

export async function run(argv: string[]): Promise<Record<string, unknown>> {
  const values = benchOptions(argv, {
    /** Builds queued: one per derivation of the synthetic graph. */
    builds: 20000,
    machines: 50,
    'jobs-per-machine': 4,
    /** maxPendingDbWrites of the runner: dispatch holds at it and resumes at 3/4. */
    'max-pending': 2000,
    /** Give up (and report what was reached) after this long. */
    seconds: 600,
    /** A settled-RSS sample (two full collections) every this many ms. */
    'sample-ms': 1000,
    /** The share of builds finished after which RSS counts as warmed up. */
    'warm-up': 0.2,
    seed: 1,
  });
  const { machines, seconds } = values;
  const jobsPerMachine = values['jobs-per-machine'];
  const maxPending = values['max-pending'];

  const dir = mkdtempSync(join(tmpdir(), 'hydrant-bench-soak-'));
  const pg = await startEmbeddedPostgres({ stateDir: dir, ephemeral: true });
  const pool = createPool(pg.url, { max: 16 });
  try {
    await ensureSchema(pool);
    const dag = syntheticDag({ steps: values.builds, seed: values.seed });
    const store = new CopyingStore();
    for (const d of dag.derivations) store.add(d);
    // Every derivation a build of its own: as many builds as steps.
    const drvs = dag.derivations.map((d) => d.drvPath);
    await pool.query("insert into users (username, emailaddress, password) values ('bench', 'b@x', '!')");
    await pool.query("insert into projects (name, displayname, owner) values ('nixpkgs', 'nixpkgs', 'bench')");
    const js = await pool.query("insert into jobsets (name, project, emailoverride, nixexprinput, nixexprpath) values ('trunk', 'nixpkgs', '', 'src', 'release.nix') returning id");
    await pool.query(
      `insert into builds (finished, timestamp, jobset_id, job, drvpath, system)
       select 0, 0, $1, 'job' || ord, d, 'x86_64-linux' from unnest($2::text[]) with ordinality as t(d, ord)`,
      [js.rows[0].id as number, drvs],
    );
    log(`queued ${drvs.length} builds`);

    const config = {
      stepSortFn: 'Legacy' as const, machineSortFn: 'SpeedFactorOnly' as const, machineFreeFn: 'Static' as const,
      // No machine joins before the ingest ends (minutes at 300k on a loaded machine): steps must not fail as unsupported meanwhile.
      maxRetries: 5, retryInterval: 60, retryBackoff: 3, maxUnsupportedTimeInS: 86400, maxLogSize: 64 << 20,
      maxOutputSize: 2 ** 31, maxSilentTime: 3600, buildTimeout: 36000, queueTriggerTimerInS: -1,
    };
    const rssBefore = settledRss(2);
    const t0 = performance.now();
    const runtime = await startRunnerRuntime({
      config, db: new PgSchedulerDb(pool), store, listener: new EventEmitter(), log: createLogger({ level: 'warn' }), maxPendingWrites: maxPending,
    });
    await runtime.initialLoad;
    const ingestSeconds = (performance.now() - t0) / 1000;
    const s = runtime.scheduler;
    const held = s.graph.steps.size;
    const rssIngested = settledRss(2);
    log(`ingested ${s.graph.builds.size} builds, ${held} steps in ${round(ingestSeconds, 2)} s; RSS ${round(rssBefore / 2 ** 20, 1)} → ${round(rssIngested / 2 ** 20, 1)} MB`);

    const sim = new SimulatedBuilder({ store, durationMs: () => 0 });
    const start = performance.now();
    const cpuStart = process.cpuUsage();
    for (let m = 0; m < machines; m++) {
      s.addMachine(
        simMachine(m, jobsPerMachine, 1),
        sim,
      );
    }
    const samples: Sample[] = [];
    let maxPendingSeen = 0;
    let backpressureSamples = 0;
    let polls = 0;
    const sample = (): Sample => {
      const rss = settledRss(2);
      const x: Sample = {
        t: round((performance.now() - start) / 1000, 1),
        stepsFinished: s.counters.stepsFinished,
        stepsHeld: s.graph.steps.size,
        buildsLeft: s.graph.builds.size,
        rssMB: round(rss / 2 ** 20, 1),
        heapMB: round(process.memoryUsage().heapUsed / 2 ** 20, 1),
        pendingWrites: s.pendingWrites,
        backpressure: s.writePressure.held,
      };
      samples.push(x);
      return x;
    };
    const deadline = start + seconds * 1000;
    let nextSample = performance.now() + values['sample-ms'];
    while (s.graph.builds.size > 0 && performance.now() < deadline) {
      await new Promise((r) => setTimeout(r, 20));
      // What the gauges hydrant_db_pending_writes and hydrant_db_write_backpressure read, every 20 ms.
      polls++;
      maxPendingSeen = Math.max(maxPendingSeen, s.pendingWrites);
      if (s.writePressure.held) backpressureSamples++;
      if (performance.now() >= nextSample) {
        const x = sample();
        log(`t=${x.t}s finished ${x.stepsFinished}, held ${x.stepsHeld}, RSS ${x.rssMB} MB, pending ${x.pendingWrites}${x.backpressure ? ' (held)' : ''}`);
        nextSample = performance.now() + values['sample-ms'];
      }
    }
    const buildSeconds = (performance.now() - start) / 1000;
    const resultsSeconds = buildSeconds;
    const done = s.graph.builds.size === 0;
    // Dispatch stops first (a step still running is aborted, as a stop leaves it), then every write lands.
    await runtime.stop(0);
    const stepsFinished = s.counters.stepsFinished;
    const drainedSeconds = (performance.now() - start) / 1000;
    sample();
    const cpu = process.cpuUsage(cpuStart);
    const pressure = s.writePressure;

    // Nothing lost: every build finished and succeeded, one succeeded row per step, no row left busy.
    const rows = (
      await pool.query<{ builds: number; succeeded: number; steps: number; stepsOk: number; busy: number; outputs: number }>(
        `select (select count(*)::int from builds where finished = 1) builds,
                (select count(*)::int from builds where finished = 1 and buildstatus = 0) succeeded,
                (select count(*)::int from buildsteps) steps,
                (select count(*)::int from buildsteps where status = 0) "stepsOk",
                (select count(*)::int from buildsteps where busy <> 0) busy,
                (select count(*)::int from buildstepoutputs where path is not null) outputs`,
      )
    ).rows[0]!;

    // RSS after warm-up: flat means no trend with builds finished (the graph only shrinks as builds end).
    const warm = samples.filter((x) => x.stepsFinished >= values['warm-up'] * held && x.buildsLeft > 0);
    const rss = warm.map((x) => x.rssMB);
    const slopeOf = (ys: number[]): number | null => {
      if (warm.length < 3) return null;
      const xs = warm.map((x) => x.stepsFinished / 1000);
      const mx = xs.reduce((a, b) => a + b, 0) / xs.length;
      const my = ys.reduce((a, b) => a + b, 0) / ys.length;
      const num = xs.reduce((a, x, i) => a + (x - mx) * (ys[i]! - my), 0);
      const den = xs.reduce((a, x) => a + (x - mx) ** 2, 0);
      return den === 0 ? null : num / den;
    };
    const slope = slopeOf(rss);
    const heapSlope = slopeOf(warm.map((x) => x.heapMB));
    // RSS per step while builds finish: the runner's growth over the bench's baseline, per step it held at ingest.
    const perStepWhileBuilding = samples.filter((x) => x.buildsLeft > 0).map((x) => (x.rssMB * 2 ** 20 - rssBefore) / held);
    return {
      builds: drvs.length,
      steps: held,
      machines,
      slots: machines * jobsPerMachine,
      maxPendingWrites: maxPending,
      ingestSeconds: round(ingestSeconds, 2),
      finishedAll: done,
      buildSeconds: round(buildSeconds, 1),
      drainedSeconds: round(drainedSeconds, 1),
      stepResultsPerSecond: Math.round(s.counters.stepsFinished / resultsSeconds),
      persistedStepsPerSecond: Math.round(rows.stepsOk / drainedSeconds),
      stepResults: stepsFinished,
      lost: {
        // Results the runner received (all successes here) without their succeeded row: 0 whether or not the run ended early.
        resultsWithoutRow: stepsFinished - rows.stepsOk,
        // These are also 0 when the queue ran to the end.
        buildsNotFinished: drvs.length - rows.builds,
        buildsNotSucceeded: rows.builds - rows.succeeded,
        stepsWithoutSucceededRow: held - rows.stepsOk,
        busyRows: rows.busy,
      },
      rows,
      pending: {
        // Polled every 20 ms, as a scrape of the gauges would see them.
        maxSeen: maxPendingSeen,
        // The writer's own high-water mark (every change counted).
        maxEver: pressure.maxPending,
        // The mark, plus per slot its start row and its result (a round in progress when the mark is hit finishes).
        bound: maxPending + 2 * machines * jobsPerMachine,
        backpressureHolds: pressure.holds,
        shareOfPollsHeld: round(backpressureSamples / Math.max(1, polls), 3),
      },
      rss: {
        beforeMB: round(rssBefore / 2 ** 20, 1),
        ingestedMB: round(rssIngested / 2 ** 20, 1),
        bytesPerStepIngested: Math.round((rssIngested - rssBefore) / held),
        bytesPerStepWhileBuilding: perStepWhileBuilding.length ? { median: Math.round(median(perStepWhileBuilding)), max: Math.round(Math.max(...perStepWhileBuilding)) } : null,
        warmSamples: warm.length,
        warmMinMB: rss.length ? Math.min(...rss) : null,
        warmMaxMB: rss.length ? Math.max(...rss) : null,
        warmFirstMB: rss[0] ?? null,
        warmLastMB: rss[rss.length - 1] ?? null,
        // Linear trend of settled RSS against steps finished after warm-up; ≤ 0 when flat or shrinking.
        warmSlopeMBPer1000Steps: slope === null ? null : round(slope, 3),
        // The same for the V8 heap after collection (RSS also keeps pages V8 freed but did not return).
        warmHeapMinMB: warm.length ? Math.min(...warm.map((x) => x.heapMB)) : null,
        warmHeapMaxMB: warm.length ? Math.max(...warm.map((x) => x.heapMB)) : null,
        warmHeapSlopeMBPer1000Steps: heapSlope === null ? null : round(heapSlope, 3),
        endMB: samples[samples.length - 1]!.rssMB,
      },
      cpuMsPerStep: round((cpu.user + cpu.system) / 1000 / Math.max(1, stepsFinished), 3),
      samples: samples.map((x) => [x.t, x.stepsFinished, x.stepsHeld, x.rssMB, x.heapMB, x.pendingWrites, x.backpressure ? 1 : 0]),
      sampleFields: ['t', 'stepsFinished', 'stepsHeld', 'rssMB', 'heapMB', 'pendingWrites', 'backpressure'],
    };
  } finally {
    await pool.end();
    await pg.stop();
    rmSync(dir, { recursive: true, force: true });
  }
}
