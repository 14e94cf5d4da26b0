/**
 * The jobs a builder agent holds: each order runs once a slot is free,
 * through its phases (inputs, build, outputs), reporting the phase on the
 * control stream and the result with the last output's upload (or
 * Complete); an abort kills the build and cancels the job's calls, and
 * nothing more is reported for it.
 */
import { BuilderJobError } from '../errors/index.ts';
import {
  ResultState,
  StepBusy,
  type BuildOrder,
  type CompleteRequest,
  type NixSupport as ProtoNixSupport,
  type OutputResult,
} from '../protocol/gen/runner.ts';
import { Builds } from './build.ts';
import { ensureDerivation, fetchRequisites, importMissing } from './inputs.ts';
import { JobAbortedError, sleep, unary, type Job, type JobContext } from './job.ts';
import { uploadPresigned } from './presigned-upload.ts';
import { nixSupport as nixSupportOf, outputInfos, outputPaths, uploadOrder, uploadOutput, type OutputInfo } from './outputs.ts';

/**
 * How long a phase other than building must last before it is reported: a
 * short step's phases pass in milliseconds, and a message each would cost
 * more than the step. Building is reported at once (the runner counts the
 * step as started then).
 */
const PHASE_REPORT_DELAY_MS = 250;

export class Jobs {
  readonly #ctx: JobContext;
  readonly #jobs = new Map<string, Job>();
  readonly #builds: Builds;
  #draining = false;
  #freeSlots: number;
  readonly #slotWaiters: (() => void)[] = [];

  constructor(ctx: JobContext) {
    this.#ctx = ctx;
    this.#freeSlots = ctx.config.maxJobs;
    this.#builds = new Builds(ctx);
  }

  /** Job ids currently held (accepted and not yet completed or aborted). */
  get ids(): string[] {
    return [...this.#jobs.keys()];
  }

  /** The jobs still running (not aborted), as a Join lists them. */
  running(): string[] {
    return [...this.#jobs.values()].filter((j) => !j.aborted).map((j) => j.order.jobId);
  }

  /** Takes an order (a re-sent one is accepted again): the job runs once a slot is free. */
  order(order: BuildOrder): void {
    if (this.#jobs.has(order.jobId)) {
      // A re-sent order after a reconnect: the job is already running here.
      this.#ctx.connection.sendControl({ kind: { $case: 'jobAccepted', value: { jobId: order.jobId } } });
      return;
    }
    const job: Job = { order, aborted: false, cancels: new Set(), phase: StepBusy.STEP_BUSY_PREPARING, reportedPhase: null, phaseTimer: null };
    this.#jobs.set(order.jobId, job);
    this.#ctx.connection.sendControl({ kind: { $case: 'jobAccepted', value: { jobId: order.jobId } } });
    job.done = this.#runJob(job)
      // Whatever went wrong stays with this job: the builder serves on.
      .catch((err: unknown) => this.#ctx.log(`job ${order.jobId}: ${(err as Error)?.message ?? String(err)}`))
      .finally(() => {
        if (job.phaseTimer) clearTimeout(job.phaseTimer);
        this.#jobs.delete(order.jobId);
      });
  }

  /** Aborts a job by id (the runner's Abort), if it is held here. */
  abort(jobId: string, reason: string): void {
    const job = this.#jobs.get(jobId);
    if (job) this.#abortJob(job, reason);
  }

  /**
   * Stops taking jobs, lets running ones finish for up to `graceMs`, then
   * kills what is left (reporting nothing for it).
   */
  async drain(graceMs: number): Promise<void> {
    this.#draining = true;
    const running = [...this.#jobs.values()].map((j) => j.done).filter((d): d is Promise<void> => d !== undefined);
    if (running.length > 0) {
      const grace = new AbortController();
      await Promise.race([Promise.allSettled(running), sleep(graceMs, grace.signal)]);
      grace.abort();
    }
    for (const job of this.#jobs.values()) this.#abortJob(job, 'builder shutting down');
  }

  #abortJob(job: Job, reason: string): void {
    if (job.aborted) return;
    job.aborted = true;
    this.#ctx.log(`job ${job.order.jobId} aborted: ${reason}`);
    job.build?.kill();
    for (const c of job.cancels) c();
  }

  async #slot(): Promise<() => void> {
    if (this.#freeSlots > 0) {
      this.#freeSlots--;
    } else {
      await new Promise<void>((resolve) => this.#slotWaiters.push(resolve));
    }
    let released = false;
    return () => {
      if (released) return;
      released = true;
      const next = this.#slotWaiters.shift();
      if (next) next();
      else this.#freeSlots++;
    };
  }

  async #runJob(job: Job): Promise<void> {
    const { order } = job;
    const release = await this.#slot();
    const startTime = Math.floor(Date.now() / 1000);
    const timings = { importMs: 0, buildMs: 0, uploadMs: 0 };
    const timingsNow = (): NonNullable<CompleteRequest['timings']> => ({
      startTime,
      stopTime: Math.floor(Date.now() / 1000),
      importMs: Math.round(timings.importMs),
      buildMs: Math.round(timings.buildMs),
      uploadMs: Math.round(timings.uploadMs),
    });
    const success = (o: { outputs: OutputResult[]; nixSupport: ProtoNixSupport }): CompleteRequest => ({
      jobId: order.jobId,
      state: ResultState.RESULT_STATE_SUCCESS,
      errorMsg: '',
      outputs: o.outputs,
      nixSupport: o.nixSupport,
      timings: timingsNow(),
      ...job.rounds,
    });
    let result: CompleteRequest;
    // A success is reported at the end of the last output's upload (one call fewer).
    let completedWithUpload = false;
    try {
      if (this.#draining) throw new BuilderJobError(ResultState.RESULT_STATE_PREPARING_FAILURE, 'builder is shutting down');
      result = success(
        await this.#buildJob(job, timings, (o) => {
          completedWithUpload = true;
          return success(o);
        }),
      );
    } catch (err) {
      completedWithUpload = false;
      // Aborted, or failed after its build (an upload, say): a retry here will find the outputs valid.
      this.#builds.keepLog(job);
      if (err instanceof JobAbortedError || job.aborted) {
        release();
        return;
      }
      const state = err instanceof BuilderJobError ? err.resultState : ResultState.RESULT_STATE_PREPARING_FAILURE;
      this.#ctx.log(`job ${order.jobId} failed (${ResultState[state]}): ${(err as Error).message}`);
      result = { jobId: order.jobId, state, errorMsg: (err as Error).message || String(err), outputs: [], nixSupport: undefined, timings: undefined, ...job.rounds };
    } finally {
      release();
    }
    if (completedWithUpload) return;
    result.timings = timingsNow();
    try {
      await this.#ctx.connection.withSession(() => job.aborted, (c) => unary((cb) => c.client.complete(result, cb)));
    } catch (err) {
      if (!(err instanceof JobAbortedError)) this.#ctx.log(`job ${order.jobId}: cannot report completion: ${(err as Error).message}`);
    }
  }

  /**
   * Waits until every attempt of the job's derivation accepted here before it
   * has ended. An aborted attempt ends once its Nix process has exited (Nix
   * kills the build first) and its log is kept (Builds.keepLog): a retry
   * sent at once then neither waits on Nix's lock while a dying build may
   * still make the outputs, nor finds outputs valid whose log went nowhere.
   */
  async #earlierAttemptsEnded(job: Job): Promise<void> {
    const earlier: Promise<void>[] = [];
    for (const j of this.#jobs.values()) {
      if (j === job) break;
      if (j.order.drvPath === job.order.drvPath && j.done) earlier.push(j.done);
    }
    if (earlier.length > 0) await Promise.allSettled(earlier);
  }

  /** Reports the job's phase on the control stream: no round trip; lost with a broken stream, as a phase is only informative. */
  async #stepStatus(job: Job, busy: StepBusy): Promise<void> {
    if (job.aborted) throw new JobAbortedError();
    job.phase = busy;
    if (busy === StepBusy.STEP_BUSY_BUILDING) this.#reportPhase(job);
    else job.phaseTimer ??= setTimeout(() => this.#reportPhase(job), PHASE_REPORT_DELAY_MS);
  }

  #reportPhase(job: Job): void {
    if (job.phaseTimer) clearTimeout(job.phaseTimer);
    job.phaseTimer = null;
    if (job.aborted || !this.#jobs.has(job.order.jobId) || job.phase === job.reportedPhase) return;
    job.reportedPhase = job.phase;
    this.#ctx.connection.sendControl({ kind: { $case: 'stepStatus', value: { jobId: job.order.jobId, busy: job.phase } } });
  }

  /**
   * Builds the job and uploads its outputs. `completion` makes the success
   * report that ends the last output's upload (the runner completes the job
   * with it once that output is in).
   */
  async #buildJob(
    job: Job,
    timings: { importMs: number; buildMs: number; uploadMs: number },
    completion: (o: { outputs: OutputResult[]; nixSupport: ProtoNixSupport }) => CompleteRequest,
  ): Promise<{ outputs: OutputResult[]; nixSupport: ProtoNixSupport }> {
    const { order } = job;
    const ctx = this.#ctx;
    await this.#stepStatus(job, StepBusy.STEP_BUSY_PREPARING);

    // Inputs (inputs.ts).
    const t0 = performance.now();
    const requisites = await fetchRequisites(ctx, job);
    await this.#stepStatus(job, StepBusy.STEP_BUSY_SENDING_INPUTS);
    try {
      await importMissing(ctx, job, requisites);
      // Unresolved, the requisites are the .drv's closure: once they are imported, the .drv is valid.
      // A resolved order is built as it is, without its .drv.
      if (!order.resolved && !requisites.some((r) => r.storePath === order.drvPath)) await ensureDerivation(ctx, job);
    } catch (err) {
      if (err instanceof JobAbortedError || job.aborted) throw new JobAbortedError();
      if (err instanceof BuilderJobError) throw err;
      throw new BuilderJobError(ResultState.RESULT_STATE_IMPORT_FAILURE, `importing inputs: ${(err as Error).message}`, { cause: err });
    }
    timings.importMs = performance.now() - t0;

    // Build, once no earlier attempt of the derivation is left here.
    await this.#earlierAttemptsEnded(job);
    await this.#stepStatus(job, StepBusy.STEP_BUSY_BUILDING);
    const t1 = performance.now();
    const built = await this.#builds.run(job);
    timings.buildMs = performance.now() - t1;

    // Outputs (outputs.ts).
    await this.#stepStatus(job, StepBusy.STEP_BUSY_POST_PROCESSING);
    let outputs: { name: string; path: string }[];
    let infos: Map<string, OutputInfo>;
    let nixSupport: ProtoNixSupport;
    try {
      outputs = await outputPaths(ctx, order, built);
      infos = await outputInfos(ctx, outputs.map((o) => o.path), requisites);
      nixSupport = await nixSupportOf(ctx, outputs);
    } catch (err) {
      if (job.aborted) throw new JobAbortedError();
      throw new BuilderJobError(ResultState.RESULT_STATE_POST_PROCESSING_FAILURE, (err as Error).message, { cause: err });
    }
    const maxOutputSize = Number(order.limits?.maxOutputSize ?? 0);
    if (maxOutputSize > 0) {
      for (const o of outputs) {
        const size = infos.get(o.path)!.narSize;
        if (size > maxOutputSize) {
          throw new BuilderJobError(
            ResultState.RESULT_STATE_NAR_SIZE_LIMIT_EXCEEDED,
            `output ${o.name} (${o.path}) has a NAR of ${size} bytes, over the limit of ${maxOutputSize}`,
          );
        }
      }
    }

    const results = outputs.map((o): OutputResult => {
      const i = infos.get(o.path)!;
      return { name: o.name, storePath: o.path, narHash: i.narHash, narSize: i.narSize, closureSize: i.closureSize };
    });
    await this.#stepStatus(job, StepBusy.STEP_BUSY_RECEIVING_OUTPUTS);
    const t2 = performance.now();
    // With builder-direct uploads the job completes after them (its outputs must still be its own).
    const presigned = ctx.connection.presignedUploads;
    const ordered = uploadOrder(outputs, infos);
    for (const [k, o] of ordered.entries()) {
      const info = infos.get(o.path)!;
      const last = k === ordered.length - 1;
      const final = last && !presigned
        ? (): CompleteRequest => {
            timings.uploadMs = performance.now() - t2;
            return completion({ outputs: results, nixSupport });
          }
        : undefined;
      try {
        await this.#ctx.connection.withSession(() => job.aborted, () => uploadOutput(ctx, job, o.name, o.path, info, final));
      } catch (err) {
        if (err instanceof JobAbortedError || job.aborted) throw new JobAbortedError();
        throw new BuilderJobError(ResultState.RESULT_STATE_UPLOAD_FAILURE, `uploading ${o.path}: ${(err as Error).message}`, { cause: err });
      }
    }
    if (presigned) {
      for (const o of ordered) {
        try {
          await uploadPresigned(ctx, job, o.path, presigned);
        } catch (err) {
          if (err instanceof JobAbortedError || job.aborted) throw new JobAbortedError();
          throw new BuilderJobError(ResultState.RESULT_STATE_UPLOAD_FAILURE, `uploading ${o.path} to the cache: ${(err as Error).message}`, { cause: err });
        }
      }
    }
    timings.uploadMs = performance.now() - t2;

    return { outputs: results, nixSupport };
  }
}
