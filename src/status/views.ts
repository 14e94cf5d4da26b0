import type { MachineActor } from '../actors/machine-actor.ts';
import { hasDynamicRoom, hasRoom, hasStaticRoom, machineScore } from '../actors/machine-record.ts';
import type { StepRecord } from '../actors/model.ts';
import type { Scheduler } from '../actors/scheduler.ts';
import { StepBusy } from '../db/status.ts';

/** Epoch milliseconds → Unix seconds (Hydra's time unit); 0 stays 0. */
export const seconds = (ms: number): number => (ms > 0 ? Math.floor(ms / 1000) : 0);

const BUSY_NAMES = new Map<number, string>(Object.entries(StepBusy).map(([k, v]) => [v, k[0]!.toLowerCase() + k.slice(1)]));

export function busyName(code: number): string {
  return BUSY_NAMES.get(code) ?? String(code);
}

/**
 * One machine as `/status/machines` reports it, keyed by the name written to
 * BuildSteps.machine: every field of the Rust runner's `io/machine.rs`
 * Machine that Hydra's web UI reads (Helper/Nix.pm getMachines,
 * root/machine-status.tt) with its type and meaning — the feature lists
 * always arrays (the UI dereferences them), `stats.pressure` null until the
 * builder reports PSI (the UI then hides it) — plus Hydrant's own state,
 * thresholds and failure figures.
 */
export function machineView(s: Scheduler, m: MachineActor) {
  const snap = m.snapshot();
  const load = snap.load;
  const st = s.machineStats.get(m.id);
  const done = st?.stepsDone ?? 0;
  const cfg = s.dispatcherConfig;
  const psi = load.psi;
  return {
    hostname: m.id,
    state: snap.state,
    systems: [...m.systems],
    // Without the mandatory ones: the UI lists supportedFeatures followed by mandatoryFeatures.
    supportedFeatures: [...m.features].filter((f) => !m.mandatoryFeatures.has(f)),
    mandatoryFeatures: [...m.mandatoryFeatures],
    maxJobs: m.maxJobs,
    speedFactor: m.speedFactor,
    cpuCount: m.cpuCount,
    bogomips: m.bogomips,
    score: machineScore(m, cfg.machineSortFn),
    totalMem: load.memTotalBytes,
    hasCapacity: hasRoom(m, cfg.machineFreeFn),
    hasStaticCapacity: hasStaticRoom(m),
    hasDynamicCapacity: hasDynamicRoom(m),
    thresholds: m.thresholds,
    jobs: [...m.jobs].map((j) => j.drvPath),
    stats: {
      currentJobs: snap.jobs,
      nrStepsDone: done,
      succeededBuilds: st?.succeeded ?? 0,
      failedBuilds: st?.failed ?? 0,
      totalStepTimeMs: st?.totalStepMs ?? 0,
      totalStepBuildTimeMs: st?.totalBuildMs ?? 0,
      avgStepTimeMs: done > 0 ? Math.round(st!.totalStepMs / done) : 0,
      avgStepBuildTimeMs: done > 0 ? Math.round(st!.totalBuildMs / done) : 0,
      idleSince: snap.jobs === 0 ? seconds(m.idleSince) : 0,
      lastFailure: seconds(snap.lastFailure),
      disabledUntil: seconds(snap.disabledUntil),
      consecutiveFailures: snap.failures,
      load1: load.load1,
      load5: load.load5,
      load15: load.load15,
      memUsage: load.memUsedBytes,
      pressure: psi && {
        cpuSome: psi.cpuSome,
        memSome: psi.memSome,
        memFull: psi.memFull,
        ioSome: psi.ioSome,
        ioFull: psi.ioFull,
        irqFull: psi.irqFull,
      },
      buildDirFreePercent: load.buildDirFreePercent,
      storeFreePercent: load.storeFreePercent,
    },
  };
}

/** A step in lists: what it is, for whom, and how urgent. */
export function stepView(step: StepRecord) {
  return {
    id: step.id,
    drvPath: step.drvPath,
    state: step.state,
    system: step.platform.system,
    features: step.platform.features,
    buildId: step.lowestBuildId === Number.MAX_SAFE_INTEGER ? null : step.lowestBuildId,
    globalPriority: step.globalPriority,
    localPriority: step.localPriority,
    tries: step.tries,
    runnableSince: seconds(step.runnableSince),
  };
}

/** Hydra's dispatch order within a platform: global priority, local priority, lowest build id. */
export function urgencyOrder(a: StepRecord, b: StepRecord): number {
  return b.globalPriority - a.globalPriority || b.localPriority - a.localPriority || a.lowestBuildId - b.lowestBuildId;
}
