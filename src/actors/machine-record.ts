import { IDLE_LOAD, type BuilderState, type MachineLoad } from '../machines/index.ts';
import type { PlatformRecord, StepRecord } from './model.ts';

export { IDLE_LOAD, type MachineLoad };

/** What a machine is: fixed for its life (from its Join message or the configuration). */
export interface MachineSpec {
  readonly id: string;
  readonly systems: ReadonlySet<string>;
  /** Supported features, mandatory ones included. */
  readonly features: ReadonlySet<string>;
  readonly mandatoryFeatures: ReadonlySet<string>;
  readonly maxJobs: number;
  readonly speedFactor: number;
  readonly cpuCount: number;
  readonly bogomips: number;
  readonly thresholds: MachineThresholds;
}

/** Only the MachineSpec fields of `m` (which may be a whole record), in one fixed order. */
export function specFields(m: MachineSpec): MachineSpec {
  const { id, systems, features, mandatoryFeatures, maxJobs, speedFactor, cpuCount, bogomips, thresholds } = m;
  return { id, systems, features, mandatoryFeatures, maxJobs, speedFactor, cpuCount, bogomips, thresholds };
}

/**
 * A build machine as the dispatcher reads it (Hydra's "machine"; a
 * connected builder agent): a MachineActor (machine-actor.ts), whose
 * lifecycle state, health and load come from its actor's snapshot. A plain
 * object of this shape given to Scheduler.addMachine describes a machine
 * (with its jobs set), and the scheduler spawns its actor.
 */
export interface MachineRecord extends MachineSpec {
  readonly state: BuilderState;
  readonly jobs: Set<StepRecord>;
  readonly consecutiveFailures: number;
  readonly lastFailure: number;
  readonly disabledUntil: number;
  idleSince: number;
  /** When the machine last gained room for a job. */
  roomSince: number;
  /** Latest report from the builder (dynamic capacity, disk space). */
  readonly load: MachineLoad;
}

export interface MachineThresholds {
  maxLoad1PerCpu: number;
  maxCpuPressure: number;
  maxMemPressure: number;
  maxIoPressure: number;
  minFreeDiskPercent: number;
}

export const DEFAULT_THRESHOLDS: MachineThresholds = Object.freeze({
  maxLoad1PerCpu: 1.5,
  maxCpuPressure: 75,
  maxMemPressure: 50,
  maxIoPressure: 80,
  minFreeDiskPercent: 5,
});

export type MachineSortFn = 'SpeedFactorOnly' | 'CpuCoreCountWithSpeedFactor' | 'BogomipsWithSpeedFactor';
export type MachineFreeFn = 'Static' | 'Dynamic' | 'DynamicWithMaxJobLimit';

export function machineScore(m: MachineRecord, fn: MachineSortFn): number {
  switch (fn) {
    case 'SpeedFactorOnly':
      return m.speedFactor;
    case 'CpuCoreCountWithSpeedFactor':
      return m.speedFactor * m.cpuCount;
    case 'BogomipsWithSpeedFactor':
      return m.speedFactor * Math.max(m.bogomips, 1) * m.cpuCount;
  }
}

/**
 * Hydra's rule: the step's system (or `builtin`) is one of the machine's;
 * every required feature is supported; every mandatory feature of the
 * machine is required (a preferLocalBuild step counts as requiring `local`).
 */
export function supportsPlatform(m: MachineRecord, p: PlatformRecord): boolean {
  if (p.system !== 'builtin' && !m.systems.has(p.system)) return false;
  for (const f of p.features) if (!m.features.has(f)) return false;
  for (const f of m.mandatoryFeatures) {
    if (!p.features.includes(f) && !(p.preferLocal && f === 'local')) return false;
  }
  return true;
}

/**
 * Whether the machine has room for another job under the capacity rule,
 * whatever its lifecycle state. The dispatcher decides on this (data, read
 * per assignment) and brings the actor's ready/busy state in line once per
 * dispatch round (FULL / SLOT_FREE).
 */
export function hasRoom(m: MachineRecord, fn: MachineFreeFn): boolean {
  const t = m.thresholds;
  if (m.load.buildDirFreePercent < t.minFreeDiskPercent || m.load.storeFreePercent < t.minFreeDiskPercent) return false;
  if (fn === 'Static') return hasStaticRoom(m);
  return fn === 'Dynamic' ? hasDynamicRoom(m) : hasDynamicRoom(m) && hasStaticRoom(m);
}

/** A free job slot (Hydra's `hasStaticCapacity`). */
export function hasStaticRoom(m: MachineRecord): boolean {
  return m.jobs.size < m.maxJobs;
}

/** Load and pressure under the machine's thresholds (Hydra's `hasDynamicCapacity`; free disk is checked apart). */
export function hasDynamicRoom(m: MachineRecord): boolean {
  const t = m.thresholds;
  return (
    m.load.load1 / Math.max(m.cpuCount, 1) < t.maxLoad1PerCpu &&
    m.load.cpuPressure < t.maxCpuPressure &&
    m.load.memPressure < t.maxMemPressure &&
    m.load.ioPressure < t.maxIoPressure
  );
}
