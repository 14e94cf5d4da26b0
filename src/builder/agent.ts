/**
 * The builder agent (`hydrant builder`): dials the runner, joins on the
 * control stream, pings, and runs the jobs it is ordered, in its own store
 * (a private one, or the host's).
 *
 * Byte formats (see runner.proto):
 * - FetchNar: the runner sends a NarHeader (PathInfo, compression NONE) and
 *   then the path's plain NAR bytes in `data` chunks. The agent wraps the NARs
 *   of all missing requisites into one `nix-store --export` stream itself and
 *   imports it with importVerified, which checks each NAR's hash and size
 *   against FetchRequisites' PathInfo before anything is imported.
 * - UploadOutput: an OutputHeader (nar_hash "sha256:<nix base32>", nar_size,
 *   references, deriver from the store's database) and then the output's
 *   plain NAR in 64 KiB `data` chunks, dumped from the store's files as it is
 *   sent (never buffered whole), with backpressure.
 *
 * Connection: a lost control stream is re-dialled with capped exponential
 * backoff and jitter and re-joined under the same machine id; running jobs go
 * on, and their calls wait for the new session and are retried in it.
 */
import type { ChildProcess } from 'node:child_process';
import { createHash } from 'node:crypto';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { hostname } from 'node:os';
import { join } from 'node:path';
import { status as grpcStatus, type ChannelCredentials, type ClientDuplexStream, type ClientReadableStream, type ClientWritableStream, type ServiceError } from '@grpc/grpc-js';
import type { BuilderConfig } from '../config/builder-config.ts';
import {
  BuilderJobError,
  BuilderUnauthenticatedError,
  NarHashMismatchError,
  NixFormatError,
  PathNotInStoreError,
  RunnerCertificateError,
  UnexpectedStorePathError,
  type HydrantError,
} from '../errors/index.ts';
import { parseDerivation, type Derivation } from '../nix/derivation.ts';
import { derivationStorePath } from '../nix/derivation-paths.ts';
import { derivationReferences } from '../nix/derivation.ts';
import { writeExport, type ExportWriteEntry } from '../nix/export.ts';
import { parseHash } from '../nix/hash.ts';
import { narChunks } from '../nix/nar-writer.ts';
import { readBuildNixSupport } from '../nix/nix-support.ts';
import { servePool } from '../nix/serve-session.ts';
import { chooseCompression, compressChunks, decompressChunks, readableCompressions } from '../protocol/wire-compression.ts';
import { storePathName } from '../nix/store-path.ts';
import {
  Compression,
  ResultState,
  StepBusy,
  type BuildOrder,
  type BuilderMessage,
  type CompleteRequest,
  type FetchRequisitesResponse,
  type LogChunk,
  type LogReceipt,
  type NarChunk,
  type NarHeader,
  type NixSupport as ProtoNixSupport,
  type OutputResult,
  type PathInfo,
  type RunnerMessage,
  type UploadOutputMessage,
  type UploadReceipt,
} from '../protocol/gen/runner.ts';
import { CLIENT_CERTIFICATE_MESSAGE } from '../protocol/auth.ts';
import { createBuilderClient, PROTOCOL_VERSION, type BuilderClient } from '../protocol/server.ts';
import { certificateFailure } from '../protocol/tls.ts';
import { hostFacts, hostMetrics } from './host-metrics.ts';
import { runNixBuild, type NixBuildHandle, type NixBuildLimits } from './nix-build.ts';
import type { NixStoreHandle } from '../nix/private-store.ts';
import { ServeBuilds } from './serve-build.ts';
import { basicDerivation } from '../nix/basic-derivation.ts';
import { fromResolved } from '../protocol/resolved-derivation.ts';
import { importVerified } from '../nix/transfer.ts';

export const UPLOAD_CHUNK_SIZE = 64 * 1024;

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

interface Job {
  readonly order: BuildOrder;
  aborted: boolean;
  build?: NixBuildHandle;
  readonly cancels: Set<() => void>;
  done?: Promise<void>;
  /** The current phase, and the last one reported; a timer reports the current one once it lasted. */
  phase: StepBusy;
  reportedPhase: StepBusy | null;
  phaseTimer: NodeJS.Timeout | null;
}

/**
 * How long a phase other than building must last before it is reported: a
 * short step's phases pass in milliseconds, and a message each would cost
 * more than the step. Building is reported at once (the runner counts the
 * step as started then).
 */
const PHASE_REPORT_DELAY_MS = 250;

/** Refuses a NAR header that is not the one asked for (path, compression, hash and size). */
function checkNarHeader(want: PathInfo, h: NarHeader): void {
  if (!readableCompressions().includes(h.compression)) {
    throw new NixFormatError('FetchNar', `${want.storePath}: compression ${h.compression} was not asked for`);
  }
  if (h.info && h.info.storePath !== want.storePath) throw new UnexpectedStorePathError(h.info.storePath, 'unexpected');
  if (h.info && (h.info.narHash !== '' || Number(h.info.narSize) !== 0)) {
    const a = parseHash(h.info.narHash, 'sha256');
    const b = parseHash(want.narHash, 'sha256');
    if (!a.equals(b) || Number(h.info.narSize) !== Number(want.narSize)) {
      throw new NarHashMismatchError(
        want.storePath,
        { narHash: b.format('base32'), narSize: Number(want.narSize) },
        { narHash: a.format('base32'), narSize: Number(h.info.narSize) },
      );
    }
  }
}

/** A call failed because the session went away: wait for the next one and retry. */
function retriable(err: unknown): boolean {
  const code = (err as Partial<ServiceError>)?.code;
  return code === grpcStatus.UNAVAILABLE || code === grpcStatus.UNAUTHENTICATED || code === grpcStatus.CANCELLED;
}

class JobAbortedError extends Error {}

function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    const t = setTimeout(done, ms);
    function done(): void {
      clearTimeout(t);
      signal?.removeEventListener('abort', done);
      resolve();
    }
    signal?.addEventListener('abort', done, { once: true });
  });
}

export class BuilderAgent {
  readonly #o: BuilderAgentOptions;
  readonly #log: (message: string) => void;
  readonly #jobs = new Map<string, Job>();
  readonly #stop = new AbortController();
  #client: BuilderClient | undefined;
  #control: ClientDuplexStream<BuilderMessage, RunnerMessage> | undefined;
  #pingTimer: NodeJS.Timeout | undefined;
  #pingIntervalMs = 10_000;
  /** What the runner reads in uploads (from the join). */
  #uploadCompressions: Compression[] = [];
  /** Resolves when a session is joined; replaced when it is lost. */
  #joined!: Promise<void>;
  #resolveJoined!: () => void;
  #sessionGeneration = 0;
  #isJoined = false;
  readonly #stopped: Promise<void>;
  #draining = false;
  #loop: Promise<void> | undefined;
  #nixVersion: string | undefined;
  #slots: number;
  readonly #slotWaiters: (() => void)[] = [];
  readonly #transfers = { downloading: 0, uploading: 0 };
  /** Joins counted, for tests and logs. */
  joins = 0;

  constructor(options: BuilderAgentOptions) {
    this.#o = options;
    this.#log = options.log ?? (() => {});
    this.#slots = options.config.maxJobs;
    this.#resetJoined();
    this.#stopped = new Promise((resolve) => this.#stop.signal.addEventListener('abort', () => resolve(), { once: true }));
  }

  get machineId(): string {
    return this.#o.config.machineId;
  }

  /** Job ids currently held (accepted and not yet completed or aborted). */
  get runningJobs(): string[] {
    return [...this.#jobs.keys()];
  }

  /** Starts connecting; returns at once. */
  start(): void {
    this.#client ??= createBuilderClient(this.#o.config.server, this.#o.token, undefined, this.#o.credentials);
    this.#loop ??= this.#connectLoop();
  }

  /** Resolves once a session is joined. */
  waitJoined(): Promise<void> {
    return this.#joined;
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
    this.#stop.abort();
    this.#teardown();
    await this.#loop?.catch(() => {});
    this.#client?.close();
  }

  /** Drops the control stream as if the connection broke (for tests). */
  dropConnection(): void {
    this.#control?.cancel();
  }

  // ---- connection ---------------------------------------------------------

  #resetJoined(): void {
    this.#joined = new Promise((resolve) => {
      this.#resolveJoined = resolve;
    });
  }

  async #connectLoop(): Promise<void> {
    const { reconnectMinMs, reconnectMaxMs } = this.#o.config;
    let attempt = 0;
    while (!this.#stop.signal.aborted) {
      let joined = false;
      try {
        await this.#session(() => {
          joined = true;
        });
      } catch (err) {
        const fatal = this.#stop.signal.aborted ? undefined : this.#refusal(err);
        if (fatal) {
          this.#teardown();
          this.#o.onFatal?.(fatal);
          return;
        }
        if (!this.#stop.signal.aborted) this.#log(`control stream: ${(err as Error).message}`);
      }
      this.#teardown();
      if (this.#stop.signal.aborted) break;
      if (joined) attempt = 0;
      const cap = Math.min(reconnectMaxMs, reconnectMinMs * 2 ** Math.min(attempt, 30));
      attempt++;
      // Full jitter over the upper half: never a thundering herd, never zero.
      await sleep(cap / 2 + Math.random() * (cap / 2), this.#stop.signal);
    }
  }

  /** A control stream's failure that no retry can fix, as the error to stop with. */
  #refusal(err: unknown): HydrantError | undefined {
    const c = this.#o.config;
    const { code, details = '' } = err as Partial<ServiceError>;
    if (code === grpcStatus.UNAUTHENTICATED) {
      if (details === CLIENT_CERTIFICATE_MESSAGE) {
        return new BuilderUnauthenticatedError(
          c.certFile
            ? `the runner at ${c.server} refused the client certificate ${c.certFile} (--cert): ${details}`
            : `the runner at ${c.server} requires a client certificate: set --cert and --key (certFile, keyFile)`,
        );
      }
      return new BuilderUnauthenticatedError(`the runner at ${c.server} refused the token in ${c.tokenFile} (--token-file): ${details || 'unauthenticated'}`);
    }
    const cert = code === grpcStatus.UNAVAILABLE && c.tlsCaFile ? certificateFailure(details) : undefined;
    if (cert) return new RunnerCertificateError(`the runner at ${c.server} failed TLS verification against ${c.tlsCaFile} (--tls-ca): ${cert}`);
    return undefined;
  }

  #teardown(): void {
    if (this.#pingTimer) clearInterval(this.#pingTimer);
    this.#pingTimer = undefined;
    const c = this.#control;
    this.#control = undefined;
    if (c) {
      try {
        c.end();
      } catch {
        // already closed
      }
      c.cancel();
    }
    this.#client?.setSession(undefined);
    // Calls waiting for a session now wait for the next one.
    if (this.#isJoined) {
      this.#isJoined = false;
      this.#resetJoined();
    }
  }

  async #nixVersionString(): Promise<string> {
    if (this.#nixVersion === undefined) {
      const r = await this.#o.store.run('nix', ['--version']).catch(() => null);
      const text = r?.stdout.toString('utf8').trim() ?? '';
      this.#nixVersion = /(\d+\.\d+(?:\.\d+)?\S*)\s*$/.exec(text)?.[1] ?? text;
    }
    return this.#nixVersion;
  }

  /** One control session: join, ping, take orders; resolves or rejects when the stream ends. */
  async #session(onJoined: () => void): Promise<void> {
    const cfg = this.#o.config;
    const client = this.#client!;
    const [facts, nixVersion] = await Promise.all([hostFacts(), this.#nixVersionString()]);
    if (this.#stop.signal.aborted) return;
    const stream = client.client.control();
    this.#control = stream;
    const ended = new Promise<void>((resolve, reject) => {
      stream.on('error', (e: Error) => reject(e));
      stream.on('end', () => resolve());
      stream.on('close', () => resolve());
    });
    stream.on('data', (m: RunnerMessage) => {
      try {
        this.#onMessage(m, onJoined);
      } catch (err) {
        this.#log(`bad runner message: ${(err as Error).message}`);
      }
    });
    stream.write({
      kind: {
        $case: 'join',
        value: {
          protocolVersion: PROTOCOL_VERSION,
          machineId: cfg.machineId,
          hostname: hostname(),
          systems: [...cfg.systems],
          supportedFeatures: [...cfg.supportedFeatures],
          mandatoryFeatures: [...cfg.mandatoryFeatures],
          maxJobs: cfg.maxJobs,
          speedFactor: cfg.speedFactor,
          cpuCount: facts.cpuCount,
          bogomips: facts.bogomips,
          totalMemoryBytes: facts.memTotalBytes,
          nixVersion,
          storeDir: '/nix/store',
          // After a lost connection the runner keeps exactly these.
          runningJobIds: [...this.#jobs.values()].filter((j) => !j.aborted).map((j) => j.order.jobId),
          thresholds: cfg.thresholds
            ? {
                maxLoad1PerCpu: cfg.thresholds.maxLoad1PerCpu,
                maxCpuPressure: cfg.thresholds.maxCpuPressure,
                maxMemPressure: cfg.thresholds.maxMemPressure,
                maxIoPressure: cfg.thresholds.maxIoPressure,
                minFreeDiskPercent: cfg.thresholds.minFreeDiskPercent,
              }
            : undefined,
        },
      },
    });
    await ended;
  }

  #onMessage(m: RunnerMessage, onJoined: () => void): void {
    switch (m.kind?.$case) {
      case 'joined': {
        const j = m.kind.value;
        if (j.machineId !== this.#o.config.machineId) this.#log(`runner registered us as ${j.machineId}`);
        this.#client!.setSession(j.sessionId);
        this.#sessionGeneration++;
        this.joins++;
        onJoined();
        this.#schedulePings(j.pingIntervalMs || 10_000);
        this.#uploadCompressions = j.uploadCompressions;
        this.#isJoined = true;
        this.#resolveJoined();
        this.#log(`joined as ${j.machineId}`);
        return;
      }
      case 'build':
        this.#onOrder(m.kind.value);
        return;
      case 'abort': {
        const job = this.#jobs.get(m.kind.value.jobId);
        if (job) this.#abortJob(job, m.kind.value.reason);
        return;
      }
      case 'config':
        if (m.kind.value.pingIntervalMs) this.#schedulePings(m.kind.value.pingIntervalMs);
        return;
      default:
        return;
    }
  }

  #schedulePings(intervalMs: number): void {
    this.#pingIntervalMs = intervalMs;
    if (this.#pingTimer) clearInterval(this.#pingTimer);
    this.#pingTimer = setInterval(() => void this.#ping(), this.#pingIntervalMs);
    this.#pingTimer.unref();
  }

  async #ping(): Promise<void> {
    const stream = this.#control;
    if (!stream) return;
    try {
      const m = await hostMetrics({ buildDir: this.#o.config.buildDir, storeDir: this.#o.store.realPath('/nix/store') });
      if (this.#control !== stream) return;
      stream.write({
        kind: {
          $case: 'ping',
          value: {
            load1: m.load1,
            load5: m.load5,
            load15: m.load15,
            memoryUsedBytes: Math.max(0, m.memTotalBytes - m.memAvailableBytes),
            cpuPressure: m.cpuPressure,
            memoryPressure: m.memPressure,
            ioPressure: m.ioPressure,
            buildDirFreePercent: m.buildDirFreePercent,
            storeFreePercent: m.storeFreePercent,
            transfers: { downloading: this.#transfers.downloading, uploading: this.#transfers.uploading, substituting: 0 },
          },
        },
      });
    } catch (err) {
      this.#log(`ping: ${(err as Error).message}`);
    }
  }

  #sendControl(m: BuilderMessage): void {
    try {
      this.#control?.write(m);
    } catch {
      // the stream broke; the reconnect re-joins
    }
  }

  /**
   * Runs a unary or streaming call in the current session; when the session
   * is lost (UNAVAILABLE, UNAUTHENTICATED, CANCELLED) waits for the next one
   * and tries again. Gives up once the job is aborted or the agent stopped.
   */
  async #withSession<T>(job: Job | undefined, fn: (client: BuilderClient) => Promise<T>): Promise<T> {
    for (let attempt = 0; ; attempt++) {
      if (job?.aborted) throw new JobAbortedError();
      await Promise.race([this.#joined, this.#stopped]);
      if (this.#stop.signal.aborted && !this.#control) throw new JobAbortedError();
      if (job?.aborted) throw new JobAbortedError();
      const generation = this.#sessionGeneration;
      try {
        return await fn(this.#client!);
      } catch (err) {
        if (job?.aborted) throw new JobAbortedError();
        if (!retriable(err) || attempt >= 20) throw err;
        // Same session still up (a transient failure): back off a little.
        if (generation === this.#sessionGeneration) await sleep(Math.min(5000, 100 * 2 ** attempt), this.#stop.signal);
      }
    }
  }

  // ---- jobs -----------------------------------------------------------------

  #onOrder(order: BuildOrder): void {
    if (this.#jobs.has(order.jobId)) {
      // A re-sent order after a reconnect: the job is already running here.
      this.#sendControl({ kind: { $case: 'jobAccepted', value: { jobId: order.jobId } } });
      return;
    }
    const job: Job = { order, aborted: false, cancels: new Set(), phase: StepBusy.STEP_BUSY_PREPARING, reportedPhase: null, phaseTimer: null };
    this.#jobs.set(order.jobId, job);
    this.#sendControl({ kind: { $case: 'jobAccepted', value: { jobId: order.jobId } } });
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
    if (this.#slots > 0) {
      this.#slots--;
    } else {
      await new Promise<void>((resolve) => this.#slotWaiters.push(resolve));
    }
    let released = false;
    return () => {
      if (released) return;
      released = true;
      const next = this.#slotWaiters.shift();
      if (next) next();
      else this.#slots++;
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
      await this.#withSession(job, (c) => unary((cb) => c.client.complete(result, cb)));
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
    this.#sendControl({ kind: { $case: 'stepStatus', value: { jobId: job.order.jobId, busy: job.phase } } });
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
    const store = this.#o.store;
    await this.#stepStatus(job, StepBusy.STEP_BUSY_PREPARING);

    // Inputs.
    const t0 = performance.now();
    let requisites: PathInfo[];
    try {
      requisites = order.requisitesIncluded
        ? order.requisites
        : (await this.#withSession(job, (c) => unary<FetchRequisitesResponse>((cb) => c.client.fetchRequisites({ jobId: order.jobId }, cb)))).requisites;
    } catch (err) {
      if (err instanceof JobAbortedError) throw err;
      throw new BuilderJobError(ResultState.RESULT_STATE_PREPARING_FAILURE, `cannot fetch requisites: ${(err as Error).message}`, { cause: err });
    }
    await this.#stepStatus(job, StepBusy.STEP_BUSY_SENDING_INPUTS);
    try {
      await this.#importMissing(job, requisites);
      // Unresolved, the requisites are the .drv's closure: once they are imported, the .drv is valid.
      // A resolved order is built as it is, without its .drv.
      if (!order.resolved && !requisites.some((r) => r.storePath === order.drvPath)) await this.#ensureDerivation(job);
    } catch (err) {
      if (err instanceof JobAbortedError || job.aborted) throw new JobAbortedError();
      if (err instanceof BuilderJobError) throw err;
      throw new BuilderJobError(ResultState.RESULT_STATE_IMPORT_FAILURE, `importing inputs: ${(err as Error).message}`, { cause: err });
    }
    timings.importMs = performance.now() - t0;

    // Build.
    await this.#stepStatus(job, StepBusy.STEP_BUSY_BUILDING);
    const t1 = performance.now();
    const built = await this.#build(job);
    timings.buildMs = performance.now() - t1;

    // Outputs.
    await this.#stepStatus(job, StepBusy.STEP_BUSY_POST_PROCESSING);
    let outputs: { name: string; path: string }[];
    let infos: Map<string, { narHash: string; narSize: number; references: string[]; deriver: string | null; closureSize: number }>;
    let nixSupport: ProtoNixSupport;
    try {
      outputs = await this.#outputPaths(order, built);
      infos = await this.#outputInfos(outputs.map((o) => o.path));
      nixSupport = await this.#nixSupport(outputs);
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
        await this.#withSession(job, () => this.#upload(job, o.name, o.path, info, final));
      } catch (err) {
        if (err instanceof JobAbortedError || job.aborted) throw new JobAbortedError();
        throw new BuilderJobError(ResultState.RESULT_STATE_UPLOAD_FAILURE, `uploading ${o.path}: ${(err as Error).message}`, { cause: err });
      }
    }
    timings.uploadMs = performance.now() - t2;

    return { outputs: results, nixSupport };
  }

  /** The requisites not valid in the store, fetched as plain NARs and imported in one verified export stream. */
  async #importMissing(job: Job, requisites: readonly PathInfo[]): Promise<void> {
    if (requisites.length === 0) return;
    const store = this.#o.store;
    const paths = requisites.map((r) => r.storePath);
    const valid = new Set(await servePool(store).use((session) => session.queryValid(paths)));
    // Dependencies first, as FetchRequisites promises: keep its order.
    const missing = requisites.filter((p) => !valid.has(p.storePath));
    if (missing.length === 0) return;
    const expected = new Map(missing.map((p) => [p.storePath, { narHash: p.narHash, narSize: Number(p.narSize) }]));
    // One FetchNar call streams them all, in order; each entry reads its part.
    const nars = this.#fetchNars(job, missing);
    const entries = (async function* (): AsyncGenerator<ExportWriteEntry> {
      for (const p of missing) {
        yield { path: p.storePath, references: p.references, deriver: p.deriver ?? null, nar: nars.next(p) };
      }
    })();
    try {
      await importVerified(store, writeExport(entries), expected, { spoolDir: this.#o.config.buildDir });
    } finally {
      nars.close();
    }
  }

  /**
   * The plain NARs of `wanted`, in order, from one FetchNar call (zstd on the
   * wire where the runner chose it): `next(p)` yields p's bytes, which must
   * be read to the end before the next path's.
   */
  #fetchNars(job: Job, wanted: readonly PathInfo[]): { next(want: PathInfo): AsyncGenerator<Uint8Array>; close(): void } {
    const [first, ...more] = wanted;
    let call: ClientReadableStream<NarChunk> | undefined;
    let it: AsyncIterator<NarChunk> | undefined;
    let pending: NarChunk | undefined;
    const cancel = (): void => call?.cancel();
    const self = this;
    return {
      async *next(want: PathInfo): AsyncGenerator<Uint8Array> {
        if (job.aborted) throw new JobAbortedError();
        if (!it) {
          await self.#joined;
          call = self.#client!.client.fetchNar({ jobId: job.order.jobId, storePath: first!.storePath, moreStorePaths: more.map((p) => p.storePath), accept: readableCompressions() });
          job.cancels.add(cancel);
          it = (call as AsyncIterable<NarChunk>)[Symbol.asyncIterator]();
        }
        const head = pending ?? (await it.next()).value;
        pending = undefined;
        if (head?.part?.$case !== 'header') throw new NixFormatError('FetchNar', `${want.storePath}: no header`);
        checkNarHeader(want, head.part.value);
        const compression = head.part.value.compression;
        self.#transfers.downloading++;
        try {
          const source = it;
          const wire = async function* (): AsyncGenerator<Uint8Array> {
            for (let r = await source.next(); !r.done; r = await source.next()) {
              if (r.value.part?.$case === 'header') {
                pending = r.value; // the next path's
                return;
              }
              if (r.value.part?.$case === 'data') yield r.value.part.value;
            }
          };
          yield* decompressChunks(wire(), compression);
        } finally {
          self.#transfers.downloading--;
        }
        if (job.aborted) throw new JobAbortedError();
      },
      close(): void {
        job.cancels.delete(cancel);
        call?.cancel();
      },
    };
  }

  /** Adds the ordered .drv to the store from the order's bytes when the requisites did not bring it. */
  async #ensureDerivation(job: Job): Promise<void> {
    const { order } = job;
    const store = this.#o.store;
    const check = await store.run('nix-store', ['--check-validity', order.drvPath]);
    if (check.exitCode === 0) return;
    if (order.drv.length === 0) throw new BuilderJobError(ResultState.RESULT_STATE_PREPARING_FAILURE, `${order.drvPath} is not in the store and the order carries no .drv`);
    const text = Buffer.from(order.drv).toString('utf8');
    const drv = parseDerivation(text);
    const name = storePathName(order.drvPath).replace(/\.drv$/, '');
    const computed = derivationStorePath(drv, name);
    if (computed !== order.drvPath) throw new UnexpectedStorePathError(order.drvPath, 'unexpected');
    const dir = await mkdtemp(join(this.#o.config.buildDir, 'hydrant-drv-'));
    try {
      const file = join(dir, 'drv');
      await writeFile(file, order.drv);
      const h = createHash('sha256');
      let size = 0;
      for await (const c of narChunks(file)) {
        h.update(c);
        size += c.length;
      }
      const narHash = `sha256:${h.digest('hex')}`;
      const entry: ExportWriteEntry = { path: order.drvPath, references: derivationReferences(drv), deriver: null, nar: narChunks(file) };
      await importVerified(store, writeExport([entry]), new Map([[order.drvPath, { narHash, narSize: size }]]), { spoolDir: this.#o.config.buildDir });
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  }

  /** Build sessions, one per slot in use (the slots bound how many run). */
  #serveBuilds: ServeBuilds | undefined;

  /**
   * Runs the build with the order's limits, streaming its log; resolves on
   * success with output paths. Over a serve session when the derivation's
   * inputs are known from the .drv files, else with `nix-store --realise`.
   */
  async #build(job: Job): Promise<Map<string, string>> {
    const { order } = job;
    const limits: NixBuildLimits = {
      maxSilentTime: order.limits?.maxSilentTimeS ?? 0,
      buildTimeout: order.limits?.buildTimeoutS ?? 0,
      maxLogSize: Number(order.limits?.maxLogSize ?? 0) || Number.POSITIVE_INFINITY,
    };
    const logs = new LogSender(this, job);
    // Nix stops the build at the log limit; nothing past it is forwarded either way.
    let logBytes = 0;
    const onLog = (chunk: Buffer): void => {
      const room = limits.maxLogSize - logBytes;
      if (room <= 0) return;
      logBytes += chunk.length;
      logs.write(chunk.length > room ? chunk.subarray(0, room) : chunk);
    };
    const store = this.#o.store;
    const basic = await this.#basicDerivation(order);
    const handle: NixBuildHandle = basic
      ? (this.#serveBuilds ??= new ServeBuilds(store)).run(order.drvPath, basic, limits, onLog)
      : runNixBuild(order.drvPath, limits, onLog, process.env, (cmd, args) => store.spawn(cmd, args) as ChildProcess);
    job.build = handle;
    if (job.aborted) handle.kill();
    const result = await handle.done;
    job.build = undefined;
    await logs.finish();
    if (job.aborted) throw new JobAbortedError();
    if (result.kind === 'built') return result.outputs;
    if (result.kind === 'error') throw new BuilderJobError(ResultState.RESULT_STATE_PREPARING_FAILURE, result.errorMsg);
    const state =
      result.status === 7
        ? ResultState.RESULT_STATE_TIMED_OUT
        : result.status === 10
          ? ResultState.RESULT_STATE_LOG_LIMIT_EXCEEDED
          : result.status === 12
            ? ResultState.RESULT_STATE_NOT_DETERMINISTIC
            : ResultState.RESULT_STATE_BUILD_FAILURE;
    throw new BuilderJobError(state, result.errorMsg || 'build failed');
  }

  /** The order's derivation as BuildDerivation takes it, or null when it must be realised. */
  async #basicDerivation(order: BuildOrder): Promise<Derivation | null> {
    if (order.resolved) return fromResolved(order.resolved);
    try {
      const text = order.drv.length > 0 ? Buffer.from(order.drv).toString('utf8') : await readFile(this.#o.store.realPath(order.drvPath), 'utf8');
      return await basicDerivation(this.#o.store, parseDerivation(text));
    } catch {
      return null; // nix-store --realise reports what is wrong
    }
  }

  /** @internal used by LogSender: a new StreamLog call in the current session, if one is joined. */
  logStream(cb: (err: ServiceError | null, res?: LogReceipt) => void): ClientWritableStream<LogChunk> | undefined {
    if (!this.#isJoined || !this.#client) return undefined;
    return this.#client.client.streamLog((err, res) => cb(err, res));
  }

  async #outputPaths(order: BuildOrder, built: Map<string, string>): Promise<{ name: string; path: string }[]> {
    const result = new Map<string, string>();
    for (const o of order.outputs) if (o.path) result.set(o.name, o.path);
    if (result.size < order.outputs.length) {
      const { stdout } = await this.#o.store.runChecked('nix', ['realisation', 'info', '--json', order.drvPath]);
      const list = JSON.parse(stdout.toString('utf8')) as { id: string; outPath: string }[];
      for (const r of list) {
        const p = r.outPath.startsWith('/') ? r.outPath : `/nix/store/${r.outPath}`;
        result.set(r.id.slice(r.id.lastIndexOf('!') + 1), p);
      }
    }
    if (order.outputs.length === 0) {
      // An order without outputs listed: take what nix-store printed (names unknown → by position).
      let i = 0;
      for (const p of built.keys()) result.set(i++ === 0 ? 'out' : `out${i}`, p);
    }
    return [...result].map(([name, path]) => ({ name, path }));
  }

  async #outputInfos(paths: readonly string[]): Promise<Map<string, { narHash: string; narSize: number; references: string[]; deriver: string | null; closureSize: number }>> {
    const store = this.#o.store;
    // Over the store's serve session: no Nix process per step for metadata.
    return servePool(store).use(async (session) => {
      const infos = await session.queryPathInfos(paths);
      const result = new Map<string, { narHash: string; narSize: number; references: string[]; deriver: string | null; closureSize: number }>();
      for (const i of infos) {
        const closure = await session.queryClosure([i.path], false);
        const sizes = await session.queryPathInfos(closure);
        result.set(i.path, {
          narHash: parseHash(i.narHash, 'sha256').format('base32'),
          narSize: i.narSize,
          references: i.references,
          deriver: i.deriver,
          closureSize: sizes.reduce((n, x) => n + x.narSize, 0),
        });
      }
      const missing = paths.filter((p) => !result.has(p));
      if (missing.length > 0) throw new PathNotInStoreError(missing);
      return result;
    });
  }

  async #nixSupport(outputs: readonly { name: string; path: string }[]): Promise<ProtoNixSupport> {
    const store = this.#o.store;
    // Products name paths as the build saw them (/nix/store/…); they are read where the store keeps them.
    const s = await readBuildNixSupport(outputs, (p) => store.realPath(p));
    for (const r of s.rejected) this.#log(`nix-support: ${r.file}:${r.line}: ${r.text ? `${r.text}: ` : ''}${r.reason}`);
    return {
      products: s.products.map((p) => ({
        type: p.type,
        subtype: p.subtype,
        fileSize: p.fileSize ?? undefined,
        sha256Hash: p.sha256hash ?? undefined,
        path: p.path,
        name: p.name,
        defaultPath: p.defaultPath || undefined,
      })),
      releaseName: s.releaseName ?? undefined,
      metrics: s.metrics.map((m) => ({ name: m.name, value: m.value, unit: m.unit ?? undefined })),
      failed: s.failed,
    };
  }

  /** Streams one output: header, then the NAR in 64 KiB chunks (zstd when large), with backpressure; the hash is of the plain NAR. */
  async #upload(
    job: Job,
    name: string,
    path: string,
    info: { narHash: string; narSize: number; references: string[]; deriver: string | null },
    final?: () => CompleteRequest,
  ): Promise<UploadReceipt> {
    let finish!: (err: ServiceError | null, res?: UploadReceipt) => void;
    const receipt = new Promise<UploadReceipt>((resolve, reject) => {
      finish = (err, res) => (err ? reject(err) : resolve(res!));
    });
    let ended = false;
    const call = this.#client!.client.uploadOutput((err, res) => {
      ended = true;
      finish(err, res);
    });
    const compression = chooseCompression(info.narSize, this.#uploadCompressions);
    const cancel = (): void => call.cancel();
    job.cancels.add(cancel);
    this.#transfers.uploading++;
    let failed: unknown;
    call.on('error', (e) => {
      failed ??= e;
    });
    // The call ends with a status however the upload ends (CANCELLED once
    // aborted): taken here, it never becomes an unhandled rejection that kills
    // the builder. And it ends a wait for room: grpc-js ends a client stream
    // through its callback, without 'close' or 'error', so a wait on 'drain'
    // alone would never end.
    const callEnded = receipt.then(
      () => {},
      (e: unknown) => {
        failed ??= e;
      },
    );
    const write = (m: UploadOutputMessage): Promise<void> => {
      if (call.write(m)) return Promise.resolve();
      let done!: () => void;
      const drained = new Promise<void>((resolve) => {
        done = resolve;
        call.once('drain', done);
      });
      return Promise.race([drained, callEnded]).finally(() => call.off('drain', done));
    };
    try {
      await write({
        part: {
          $case: 'header',
          value: {
            jobId: job.order.jobId,
            outputName: name,
            storePath: path,
            narHash: info.narHash,
            narSize: info.narSize,
            references: info.references,
            deriver: info.deriver ?? undefined,
            ca: undefined,
            compression,
          },
        },
      });
      const h = createHash('sha256');
      let size = 0;
      const plain = async function* (this: void, chunks: AsyncIterable<Uint8Array>): AsyncGenerator<Uint8Array> {
        for await (const chunk of chunks) {
          h.update(chunk);
          size += chunk.length;
          yield chunk;
        }
      };
      for await (const chunk of compressChunks(plain(narChunks(this.#o.store.realPath(path), { chunkSize: UPLOAD_CHUNK_SIZE })), compression)) {
        if (failed !== undefined || job.aborted) break;
        await write({ part: { $case: 'data', value: Buffer.from(chunk.buffer, chunk.byteOffset, chunk.byteLength) } });
      }
      if (job.aborted) throw new JobAbortedError();
      if (failed === undefined) {
        const actual = `sha256:${h.digest('hex')}`;
        if (size !== info.narSize || !parseHash(actual).equals(parseHash(info.narHash, 'sha256'))) {
          call.cancel();
          throw new NarHashMismatchError(path, { narHash: info.narHash, narSize: info.narSize }, { narHash: parseHash(actual).format('base32'), narSize: size });
        }
        if (final) await write({ part: { $case: 'complete', value: final() } });
        call.end();
      }
      const r = await receipt;
      if (!r.verified) throw new Error(`the runner did not verify ${path} (received ${r.bytesReceived} bytes)`);
      return r;
    } finally {
      this.#transfers.uploading--;
      job.cancels.delete(cancel);
      // Left early (aborted, or reading the output failed): the runner must not wait for the rest.
      if (!ended) call.cancel();
    }
  }
}

/** Log output kept per job while no session is joined (the oldest is dropped beyond it). */
export const LOG_BACKLOG_BYTES = 1024 * 1024;

/**
 * A job's live log: one StreamLog call, re-opened in the next session when the
 * connection is lost (the runner appends to what it already has). Output
 * while no session is joined is kept, up to LOG_BACKLOG_BYTES, and sent first
 * once one is.
 */
class LogSender {
  #stream: ClientWritableStream<LogChunk> | undefined;
  /** Streams whose first chunk (the one naming the job) has been sent. */
  readonly #named = new WeakSet<ClientWritableStream<LogChunk>>();
  readonly #pending: Promise<unknown>[] = [];
  readonly #backlog: Buffer[] = [];
  #backlogBytes = 0;

  constructor(
    private readonly agent: BuilderAgent,
    private readonly job: Job,
  ) {}

  write(data: Buffer): void {
    if (this.job.aborted) return;
    if (this.#stream === undefined && !this.#open()) {
      // Not connected: keep the output for the next session, dropping the oldest beyond the cap.
      this.#backlog.push(data);
      this.#backlogBytes += data.length;
      while (this.#backlogBytes > LOG_BACKLOG_BYTES && this.#backlog.length > 1) this.#backlogBytes -= this.#backlog.shift()!.length;
      return;
    }
    this.#send(data);
  }

  /** Opens a StreamLog call and sends the backlog on it; false when no session is joined. */
  #open(): boolean {
    let s: ClientWritableStream<LogChunk> | undefined;
    // A client-streaming call reports its failure through the callback (and
    // `status`), not `error`: either way this stream is done, and the next
    // write opens another.
    const ended = (): void => {
      if (s !== undefined && this.#stream === s) this.#stream = undefined;
    };
    s = this.agent.logStream((err) => {
      if (err) ended();
    });
    if (s === undefined) return false;
    let done!: () => void;
    this.#pending.push(new Promise<void>((r) => (done = r)));
    s.on('error', ended);
    s.on('status', () => {
      ended();
      done();
    });
    s.on('close', () => {
      ended();
      done();
    });
    this.#stream = s;
    const backlog = this.#backlog.splice(0);
    this.#backlogBytes = 0;
    for (const b of backlog) this.#send(b);
    return true;
  }

  #send(data: Buffer): void {
    const s = this.#stream;
    if (s === undefined) return;
    try {
      // The first chunk of a stream names the job.
      s.write({ jobId: this.#named.has(s) ? '' : this.job.order.jobId, compression: Compression.COMPRESSION_NONE, data });
      this.#named.add(s);
    } catch {
      if (this.#stream === s) this.#stream = undefined;
    }
  }

  /** Ends the log and waits (briefly) for the runner to take it. */
  async finish(): Promise<void> {
    if (!this.job.aborted && this.#stream === undefined && this.#backlog.length > 0) this.#open();
    const s = this.#stream;
    if (s && !this.job.aborted) {
      try {
        s.end();
      } catch {
        // already closed
      }
    } else s?.cancel();
    await Promise.race([Promise.allSettled(this.#pending), sleep(10_000)]);
  }
}

function unary<Res>(start: (cb: (err: ServiceError | null, res: Res) => void) => unknown): Promise<Res> {
  return new Promise((resolve, reject) => {
    start((err, res) => (err ? reject(err) : resolve(res)));
  });
}
