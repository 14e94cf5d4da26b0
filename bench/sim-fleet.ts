/**
 * Pieces shared by the benches that run the real scheduler against simulated
 * builders (dispatch, dispatch-core, soak).
 */
import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';
import { DEFAULT_THRESHOLDS, IDLE_LOAD, type MachineRecord } from '../src/actors/machine-record.ts';

/** Machine `m<index>` of a simulated x86_64-linux fleet: `jobs` slots, 4 cores, `speedFactor`, about to join. */
export function simMachine(index: number, jobs: number, speedFactor: number): MachineRecord {
  return {
    id: `m${index}`, systems: new Set(['x86_64-linux']), features: new Set(), mandatoryFeatures: new Set(), maxJobs: jobs,
    speedFactor, cpuCount: 4, bogomips: 1, state: 'joining', jobs: new Set(), consecutiveFailures: 0, lastFailure: 0,
    disabledUntil: 0, idleSince: 0, roomSince: 0, load: { ...IDLE_LOAD }, thresholds: DEFAULT_THRESHOLDS,
  };
}

let gc: (() => void) | null = null;

/** RSS after `rounds` full collections: what the process holds, not garbage not yet collected. */
export function settledRss(rounds = 3): number {
  if (!gc) {
    setFlagsFromString('--expose-gc');
    gc = runInNewContext('gc') as () => void;
  }
  for (let i = 0; i < rounds; i++) gc();
  return process.memoryUsage().rss;
}
