/**
 * The builder agent (`hydrant builder`): dials the runner, joins on the
 * control stream, pings, and runs the jobs it is ordered, in its own store
 * (a private one, or the host's). This module composes the parts and runs
 * each job through its phases:
 *
 * - connection.ts: the connection machine as a live actor (dial, join,
 *   ping, reconnect with backoff, a refusal is fatal) and the control stream;
 * - inputs.ts: requisites, the missing NARs (FetchNar) and verified imports;
 * - build.ts: the build under the order's limits (serve session or realise);
 * - log-sender.ts: the build log, streamed live and kept while disconnected;
 * - outputs.ts: output metadata, nix-support, and the uploads with their
 *   receipts and abort handling.
 *
 * A lost connection does not stop running jobs: their calls wait for the
 * next session and are retried in it.
 */
import type { ChannelCredentials } from '@grpc/grpc-js';
import type { BuilderConfig } from '../config/builder-config.ts';
import { BuilderJobError, type HydrantError } from '../errors/index.ts';
import {
  ResultState,
  StepBusy,
  type BuildOrder,
  type CompleteRequest,
  type NixSupport as ProtoNixSupport,
  type OutputResult,
} from '../protocol/gen/runner.ts';
import { Builds } from './build.ts';
import { AgentConnection } from './connection.ts';
import { ensureDerivation, fetchRequisites, importMissing } from './inputs.ts';
import { JobAbortedError, sleep, unary, type Job, type JobContext, type Transfers } from './job.ts';
import { nixSupport as nixSupportOf, outputInfos, outputPaths, uploadOutput, type OutputInfo } from './outputs.ts';
import type { NixStoreHandle } from './private-store.ts';

export { UPLOAD_CHUNK_SIZE } from './outputs.ts';
export { LOG_BACKLOG_BYTES } from './log-sender.ts';

export interface BuilderAgentOptions {
  readonly config: BuilderConfig;
  readonly token: string;
  /** The store jobs are built in (PrivateStore, or hostStore). */
  readonly store: NixStoreHandle;
  readonly log?: (message: string) => void;
  /** TLS to the runner (see protocol/tls.ts); plain without. */
  readonly credentials?: ChannelCredentials;
  /**
   * The runner refused this builder's credentials, or the builder refused
   * the runner's certificate: the agent has stopped connecting, since its
   * token and TLS files are read once and a retry cannot succeed.
   */
  readonly onFatal?: (err: HydrantError) => void;
}

/**
 * How long a phase other than building must last before it is reported: a
 * short step's phases pass in milliseconds, and a message each would cost
 * more than the step. Building is reported at once (the runner counts the
 * step as started then).
 */
const PHASE_REPORT_DELAY_MS = 250;

export class BuilderAgent {
  readonly #o: BuilderAgentOptions;
  readonly #log: (message: string) => void;
  readonly #jobs = new Map<string, Job>();
  readonly #connection: AgentConnection;
  readonly #ctx: JobContext;
  readonly #builds: Builds;
  #draining = false;
  #freeSlots: number;
  readonly #slotWaiters: (() => void)[] = [];
  readonly #transfers: Transfers = { downloading: 0, uploading: 0 };

  constructor(options: BuilderAgentOptions) {
    this.#o = options;
    this.#log = options.log ?? (() => {});
    this.#freeSlots = options.config.maxJobs;
    this.#connection = new AgentConnection(
      { config: options.config, token: options.token, store: options.store, log: this.#log, credentials: options.credentials, onFatal: options.onFatal },
      {
        runningJobIds: () => [...this.#jobs.values()].filter((j) => !j.aborted).map((j) => j.order.jobId),
        onOrder: (order) => this.#onOrder(order),
        onAbort: (jobId, reason) => {
          const job = this.#jobs.get(jobId);
          if (job) this.#abortJob(job, reason);
        },
        transfers: this.#transfers,
      },
    );
    this.#ctx = { config: options.config, store: options.store, log: this.#log, connection: this.#connection, transfers: this.#transfers };
    this.#builds = new Builds(this.#ctx);
  }

  get machineId(): string {
    return this.#o.config.machineId;
  }

  /** Job ids currently held (accepted and not yet completed or aborted). */
  get runningJobs(): string[] {
    return [...this.#jobs.keys()];
  }

  /** Joins counted, for tests and logs. */
  get joins(): number {
    return this.#connection.joins;
  }

  /** The connection machine's state (connecting, joining, connected, backoff, stopped, fatal). */
  get connectionState(): string {
    return this.#connection.state;
  }

  /** Starts connecting; returns at once. */
  start(): void {
    this.#connection.start();
  }

  /** Resolves once a session is joined. */
  waitJoined(): Promise<void> {
    return this.#connection.waitJoined();
  }

  /**
   * Stops taking jobs, lets running ones finish for up to `graceMs`, then
   * kills what is left (reporting nothing for it) and disconnects.
   */
  async shutdown(graceMs = this.#o.config.shutdownGraceInS * 1000): Promise<void> {
    this.#draining = true;
    const running = [...this.#jobs.values()].map((j) => j.done).filter((d): d is Promise<void> => d !== undefined);
    if (running.length > 0) {
      const grace = new AbortController();
      await Promise.race([Promise.allSettled(running), sleep(graceMs, grace.signal)]);
      grace.abort();
    }
    for (const job of this.#jobs.values()) this.#abortJob(job, 'builder shutting down');
    this.#connection.stop();
    this.#connection.close();
  }

  /** Drops the control stream as if the connection broke (for tests). */
  dropConnection(): void {
    this.#connection.dropConnection();
  }

  // ---- jobs -----------------------------------------------------------------

  #onOrder(order: BuildOrder): void {
    if (this.#jobs.has(order.jobId)) {
      // A re-sent order after a reconnect: the job is already running here.
      this.#connection.sendControl({ kind: { $case: 'jobAccepted', value: { jobId: order.jobId } } });
      return;
    }
    const job: Job = { order, aborted: false, cancels: new Set(), phase: StepBusy.STEP_BUSY_PREPARING, reportedPhase: null, phaseTimer: null };
    this.#jobs.set(order.jobId, job);
    this.#connection.sendControl({ kind: { $case: 'jobAccepted', value: { jobId: order.jobId } } });
    job.done = this.#runJob(job)
      // Whatever went wrong stays with this job: the builder serves on.
      .catch((err: unknown) => this.#log(`job ${order.jobId}: ${(err as Error)?.message ?? String(err)}`))
      .finally(() => {
        if (job.phaseTimer) clearTimeout(job.phaseTimer);
        this.#jobs.delete(order.jobId);
      });
  }

  #abortJob(job: Job, reason: string): void {
    if (job.aborted) return;
    job.aborted = true;
    this.#log(`job ${job.order.jobId} aborted: ${reason}`);
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
      if (err instanceof JobAbortedError || job.aborted) {
        release();
        return;
      }
      const state = err instanceof BuilderJobError ? err.resultState : ResultState.RESULT_STATE_PREPARING_FAILURE;
      this.#log(`job ${order.jobId} failed (${ResultState[state]}): ${(err as Error).message}`);
      result = { jobId: order.jobId, state, errorMsg: (err as Error).message || String(err), outputs: [], nixSupport: undefined, timings: undefined };
    } finally {
      release();
    }
    if (completedWithUpload) return;
    result.timings = timingsNow();
    try {
      await this.#connection.withSession(() => job.aborted, (c) => unary((cb) => c.client.complete(result, cb)));
    } catch (err) {
      if (!(err instanceof JobAbortedError)) this.#log(`job ${order.jobId}: cannot report completion: ${(err as Error).message}`);
    }
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
    this.#connection.sendControl({ kind: { $case: 'stepStatus', value: { jobId: job.order.jobId, busy: job.phase } } });
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

    // Build.
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
      infos = await outputInfos(ctx, outputs.map((o) => o.path));
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
    for (const [k, o] of outputs.entries()) {
      const info = infos.get(o.path)!;
      const last = k === outputs.length - 1;
      const final = last
        ? (): CompleteRequest => {
            timings.uploadMs = performance.now() - t2;
            return completion({ outputs: results, nixSupport });
          }
        : undefined;
      try {
        await this.#connection.withSession(() => job.aborted, () => uploadOutput(ctx, job, o.name, o.path, info, final));
      } catch (err) {
        if (err instanceof JobAbortedError || job.aborted) throw new JobAbortedError();
        throw new BuilderJobError(ResultState.RESULT_STATE_UPLOAD_FAILURE, `uploading ${o.path}: ${(err as Error).message}`, { cause: err });
      }
    }
    timings.uploadMs = performance.now() - t2;

    return { outputs: results, nixSupport };
  }
}
