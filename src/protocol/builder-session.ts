import type { StorePathInfo } from '../nix/transfer.ts';
import type { StepBusyCode } from '../db/status.ts';
import type { BuilderPort, StepJob, StepOutcome } from '../actors/builder-port.ts';
import type { MachineActor } from '../actors/machine-actor.ts';
import type { PathInfo, ResolvedDerivation, RunnerMessage } from './gen/runner.ts';
import type { ControlSession } from './server.ts';
import type { JobOwnership } from './job-ownership.ts';

/** A job handed to a remote builder, as the runner tracks it until Complete. */
export interface RemoteJob {
  readonly job: StepJob;
  readonly report: (o: StepOutcome) => void;
  readonly progress: (busy: StepBusyCode) => void;
  /** The job's requisites with their metadata, once asked for: the only paths it may fetch or refer to. */
  requisites: ReadonlyMap<string, StorePathInfo> | null;
  /** Outputs received and imported: name → store path. */
  readonly uploaded: Map<string, string>;
}

/**
 * What an order carries besides the job: the derivation resolved to a
 * basic one when its inputs' paths are known (the builder then needs only
 * the inputs' closure, not the .drv files), and the requisites in the order
 * the builder imports them, with their metadata by path (`ordered` null when
 * too many to go in the order).
 */
export type RequisitesOf = (job: StepJob) => Promise<{
  resolved: ResolvedDerivation | null;
  ordered: PathInfo[] | null;
  byPath: ReadonlyMap<string, StorePathInfo>;
}>;

/**
 * One remote builder (a Hydra "machine") as the scheduler sees it: the
 * BuilderPort that sends build orders and aborts over the builder's control
 * stream. It outlives a connection: when the builder reconnects within the
 * grace period (kept by its machine actor), the new control stream is
 * attached and its jobs continue.
 */
export class BuilderSession implements BuilderPort {
  control: ControlSession | null = null;
  readonly jobs = new Map<string, RemoteJob>();
  lastSeen = Date.now();

  constructor(
    readonly machine: MachineActor,
    private readonly ownership: JobOwnership,
    private readonly onSendError: (err: unknown) => void,
    private readonly requisitesOf: RequisitesOf,
  ) {}

  /**
   * Sends the order with the job's requisites in it (saving the builder a
   * round trip); a job aborted meanwhile is not sent, and one whose
   * requisites cannot be read fails transiently, as a builder's
   * FetchRequisites would.
   */
  start(job: StepJob, report: (o: StepOutcome) => void, progress: (busy: StepBusyCode) => void): void {
    this.ownership.assign(job.jobId, this.machine.id);
    const remote: RemoteJob = { job, report, progress, requisites: null, uploaded: new Map() };
    this.jobs.set(job.jobId, remote);
    this.requisitesOf(job).then(
      (r) => {
        if (this.jobs.get(job.jobId) !== remote) return;
        remote.requisites = r.byPath;
        this.send({
          kind: {
            $case: 'build',
            value: {
              jobId: job.jobId,
              drvPath: job.drvPath,
              // Not the .drv itself: a resolved order needs none, an unresolved one brings it with its requisites.
              drv: Buffer.alloc(0),
              outputs: job.outputs.map((o) => ({ name: o.name, path: o.path ?? undefined })),
              limits: {
                maxSilentTimeS: job.maxSilentTime,
                buildTimeoutS: job.buildTimeout,
                maxLogSize: job.maxLogSize,
                maxOutputSize: job.maxOutputSize,
              },
              resolved: r.resolved ?? undefined,
              requisites: r.ordered ?? [],
              requisitesIncluded: r.ordered !== null,
              ...(job.repeats ? { repeats: job.repeats, enforceDeterminism: job.enforceDeterminism === true } : {}),
            },
          },
        });
      },
      (err: unknown) => {
        if (this.jobs.get(job.jobId) !== remote) return;
        this.ownership.release(job.jobId);
        this.finish(job.jobId, { kind: 'transient', errorMsg: `cannot read the requisites of ${job.drvPath}: ${(err as Error)?.message ?? err}`, machineFault: false });
      },
    );
  }

  abort(jobId: string): void {
    if (!this.jobs.delete(jobId)) return;
    this.ownership.release(jobId);
    this.send({ kind: { $case: 'abort', value: { jobId, reason: 'no build needs this step any more' } } });
  }

  /** Ends a job with a result (after Complete, or when the machine is gone). */
  finish(jobId: string, outcome: StepOutcome): void {
    const j = this.jobs.get(jobId);
    if (!j) return;
    this.jobs.delete(jobId);
    j.report(outcome);
  }

  private send(msg: RunnerMessage): void {
    const c = this.control;
    if (!c) return; // unreachable: the builder re-syncs its jobs when it re-joins
    c.send(msg).catch(this.onSendError);
  }
}
