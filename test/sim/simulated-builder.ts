import type { BuilderPort, StepJob, StepOutcome } from '../../src/actors/builder-port.ts';
import { unixNow } from '../../src/actors/builder-port.ts';
import { StepBusy, type StepBusyCode } from '../../src/db/status.ts';
import type { MemoryStore } from './memory-store.ts';

/** What a simulated build of a derivation does. */
export type SimBehaviour =
  | { kind: 'success'; failedWithOutput?: boolean }
  | { kind: 'failure'; status?: 1 | 7 | 10 | 11 | 12 }
  | { kind: 'transient'; machineFault?: boolean }
  /** Never reports (a builder that went silent). */
  | { kind: 'hang' };

export interface SimulatedBuilderOptions {
  store: MemoryStore;
  behaviour?: (job: StepJob, attempt: number) => SimBehaviour;
  /** Build duration in ms; 0 reports on the next turn of the event loop. */
  durationMs?: (job: StepJob) => number;
  /** Observes every job started (tests check exclusivity). */
  onStart?: (job: StepJob) => void;
  onEnd?: (job: StepJob) => void;
}

const EMPTY_SUPPORT = Object.freeze({ products: [], releaseName: null, metrics: [], failed: false });

/**
 * An in-process builder for scheduler tests and benchmarks: no Nix, no
 * network. A successful build marks the outputs valid in the MemoryStore.
 */
export class SimulatedBuilder implements BuilderPort {
  private readonly timers = new Map<string, NodeJS.Immediate | NodeJS.Timeout | null>();
  private readonly attempts = new Map<string, number>();
  started = 0;

  constructor(private readonly o: SimulatedBuilderOptions) {}

  start(job: StepJob, report: (o: StepOutcome) => void, progress: (busy: StepBusyCode) => void): void {
    this.started++;
    this.o.onStart?.(job);
    const attempt = (this.attempts.get(job.drvPath) ?? 0) + 1;
    this.attempts.set(job.drvPath, attempt);
    const behaviour = this.o.behaviour?.(job, attempt) ?? { kind: 'success' };
    progress(StepBusy.Building);
    if (behaviour.kind === 'hang') {
      this.timers.set(job.jobId, null);
      return;
    }
    const finish = () => {
      if (!this.timers.delete(job.jobId)) return;
      this.o.onEnd?.(job);
      report(this.outcome(job, behaviour as Exclude<SimBehaviour, { kind: 'hang' }>));
    };
    const ms = this.o.durationMs?.(job) ?? 0;
    this.timers.set(job.jobId, ms > 0 ? setTimeout(finish, ms) : setImmediate(finish));
  }

  private outcome(job: StepJob, b: Exclude<SimBehaviour, { kind: 'hang' }>): StepOutcome {
    const now = unixNow();
    if (b.kind === 'transient') return { kind: 'transient', errorMsg: 'simulated transient failure', machineFault: b.machineFault ?? false };
    if (b.kind === 'failure') return { kind: 'failure', status: b.status ?? 1, errorMsg: 'simulated failure', startTime: now, stopTime: now, logFile: '' };
    const outputs = job.outputs.map((o) => ({ name: o.name, path: o.path ?? `${job.drvPath.slice(0, -4)}-${o.name}`, narSize: 1000, closureSize: 2000 }));
    for (const o of outputs) this.o.store.valid.add(o.path);
    return {
      kind: 'success',
      outputs,
      startTime: now,
      stopTime: now,
      overheadMs: 0,
      logFile: '',
      nixSupport: b.failedWithOutput ? { ...EMPTY_SUPPORT, failed: true } : EMPTY_SUPPORT,
    };
  }

  abort(jobId: string): void {
    const t = this.timers.get(jobId);
    this.timers.delete(jobId);
    if (t) {
      clearTimeout(t as NodeJS.Timeout);
      clearImmediate(t as NodeJS.Immediate);
    }
  }

  /** Jobs started and not yet reported or aborted. */
  get running(): number {
    return this.timers.size;
  }
}
