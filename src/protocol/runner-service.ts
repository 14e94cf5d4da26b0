import { randomBytes } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import { status } from '@grpc/grpc-js';
import { BuilderSession, type RemoteJob } from './builder-session.ts';
import type { BuilderPort, StepJob, StepOutcome } from '../actors/builder-port.ts';
import { MachineActor } from '../actors/machine-actor.ts';
import { DEFAULT_THRESHOLDS, IDLE_LOAD, type MachineSpec } from '../actors/machine-record.ts';
import type { PsiFigures, PsiState } from '../machines/index.ts';
import type { Scheduler } from '../actors/scheduler.ts';
import { BuildLogWriter } from '../nix/build-log-writer.ts';
import { buildLogPath } from '../nix/build-logs.ts';
import type { NixStoreHandle } from '../nix/private-store.ts';
import { importVerified, jointClosureSize, queryPathInfos, type StorePathInfo } from '../nix/transfer.ts';
import type { StepBusyCode } from '../db/status.ts';
import { FloatingOutputMismatchError, NarHashMismatchError, NixFormatError, ProtocolError, UnexpectedStorePathError, type DiskWriteError } from '../errors/index.ts';
import { basicDerivation } from '../nix/basic-derivation.ts';
import { derivationName, isFloatingCA, outputHashMethod, parseDerivation } from '../nix/derivation.ts';
import { FloatingNarCheck } from '../nix/ca-output.ts';
import { exportOrder, writeExport } from '../nix/export.ts';
import { servePool } from '../nix/serve-session.ts';
import { narChunks } from '../nix/nar-writer.ts';
import { isStorePath } from '../nix/store-path.ts';
import type { Logger } from '../util/logger.ts';
import { Compression, ResultState, type CompleteRequest, type PresignedUploadDone, type PresignedUploadRequest, type Join, type NarChunk, type OutputHeader, type PathInfo, type Ping } from './gen/runner.ts';
import type { JobOwnership } from './job-ownership.ts';
import type { PresignedUploads } from '../cache/presigned-uploads.ts';
import { PresignedUploadError } from '../errors/index.ts';
import { resolvable, toResolved } from './resolved-derivation.ts';
import { chooseCompression, compressChunks, decompressChunks, readableCompressions } from './wire-compression.ts';
import type { CallContext, ControlSession, RunnerHandlers } from './server.ts';

export interface BuilderServiceOptions {
  scheduler: Scheduler;
  ownership: JobOwnership;
  /** The runner's own store, where requisites come from and outputs go. */
  store: NixStoreHandle;
  hydraDataDir: string;
  log: Logger;
  /** How long a disconnected builder keeps its jobs before they are retried elsewhere. */
  graceMs: number;
  /** A builder silent for this long is treated as disconnected. */
  pingTimeoutMs: number;
  /** Builder-direct uploads into this S3 cache (usePresignedUploads); absent: off. */
  presigned?: PresignedUploads | undefined;
}

/**
 * The runner's side of the builder protocol: every joined builder becomes a
 * machine of the scheduler (a BuilderSession around a MachineActor, which
 * hears of the builder only through events: JOINED, REPORTED per ping,
 * DISCONNECTED, RECONNECTED; its grace timer ends it, and the session is
 * dropped once the actor is gone); requisites and NARs are served
 * from the runner's store; uploaded outputs are verified (path, references,
 * NAR hash and size) before they are imported; results go to the scheduler.
 */
export class BuilderService implements RunnerHandlers {
  readonly sessions = new Map<string, BuilderSession>();
  /** Jobs whose log file has been started. */
  private readonly logsStarted = new WeakSet<RemoteJob>();
  /**
   * Log streams of a job still being written. A builder sends Complete once
   * it has ended its log stream, which can be before the runner has written
   * the last chunk: the job completes (and its log is published) only after.
   */
  private readonly logWrites = new WeakMap<RemoteJob, Promise<unknown>>();
  /**
   * Prefix of job ids on the wire. The scheduler's ids start over with each
   * runner process, but a builder can outlive its runner: a job of the old
   * runner must never be taken for a job of the new one.
   */
  private readonly runId = randomBytes(6).toString('base64url');
  /** Pings received per machine (for metrics). */
  readonly pings = new Map<string, number>();
  /** NAR bytes moved and what they took on the wire (for metrics). */
  readonly transfers = { sentNarBytes: 0, sentWireBytes: 0, receivedNarBytes: 0, receivedWireBytes: 0 };
  private closed = false;

  constructor(private readonly o: BuilderServiceOptions) {}

  /** The runner is stopping: no grace periods any more (streams close as the server shuts down). */
  close(): void {
    this.closed = true;
    for (const s of this.sessions.values()) if (s.machine.state === 'unreachable') s.machine.stop();
  }

  async control(cs: ControlSession): Promise<void> {
    const { scheduler, log } = this.o;
    let s = this.sessions.get(cs.machineId);
    if (s) {
      this.rejoin(s, cs);
    } else {
      s = new BuilderSession(
        new MachineActor(specFromJoin(cs.machineId, cs.join), {
          graceMs: this.o.graceMs,
          idleSince: Date.now(),
          // Memory is shown from the join on; pings update it.
          load: { ...IDLE_LOAD, memTotalBytes: cs.join.totalMemoryBytes },
        }),
        this.o.ownership,
        (err) => log.warn({ machine: cs.machineId, err: errorText(err) }, 'send to builder failed'),
        (job) => this.requisites(job, MAX_REQUISITES_IN_ORDER),
      );
      s.control = cs;
      this.sessions.set(cs.machineId, s);
      const session = s;
      scheduler.addMachine(session.machine, this.port(session));
      // Gone (its grace period ran out, or removed): its jobs are retried elsewhere.
      session.machine.subscribe((_m, c) => {
        if (c.to === 'gone' && c.from !== 'gone') this.drop(session, c.event.type === 'GRACE_EXPIRED' ? 'GRACE_EXPIRED' : 'REMOVE');
      });
      session.machine.send({ type: 'JOINED' });
      log.info({ machine: cs.machineId, systems: cs.join.systems, maxJobs: cs.join.maxJobs }, 'builder joined');
      // Jobs it still runs are from before (a runner restart, or a grace period that ran out): they were or will be dispatched again.
      for (const jobId of cs.join.runningJobIds) this.abortOrphan(cs, jobId);
    }
    const session = s;
    session.lastSeen = Date.now();
    const watchdog = setInterval(() => {
      if (Date.now() - session.lastSeen > this.o.pingTimeoutMs) cs.fail(status.DEADLINE_EXCEEDED, 'no ping within the ping timeout');
    }, Math.min(1000, this.o.pingTimeoutMs));
    try {
      for await (const msg of cs.messages) {
        session.lastSeen = Date.now();
        const k = msg.kind;
        if (k?.$case === 'ping') {
          const p = k.value;
          this.pings.set(cs.machineId, (this.pings.get(cs.machineId) ?? 0) + 1);
          session.machine.send({
            type: 'REPORTED',
            at: session.lastSeen,
            load: {
              load1: p.load1,
              cpuPressure: p.cpuPressure?.avg10 ?? 0,
              memPressure: p.memoryPressure?.avg10 ?? 0,
              ioPressure: p.ioPressure?.avg10 ?? 0,
              buildDirFreePercent: p.buildDirFreePercent,
              storeFreePercent: p.storeFreePercent,
              load5: p.load5,
              load15: p.load15,
              memUsedBytes: p.memoryUsedBytes,
              memTotalBytes: p.memoryTotalBytes || session.machine.load.memTotalBytes,
              psi: psiOf(p),
            },
          });
        } else if (k?.$case === 'stepStatus') {
          session.jobs.get(k.value.jobId)?.progress(k.value.busy as number as StepBusyCode);
        }
      }
    } catch (err) {
      log.warn({ machine: cs.machineId, err: errorText(err) }, 'builder stream failed');
    } finally {
      clearInterval(watchdog);
      if (session.control === cs) {
        session.control = null;
        if (!this.closed && this.sessions.get(cs.machineId) === session && session.machine.state !== 'gone') {
          log.warn({ machine: cs.machineId, graceMs: this.o.graceMs, jobs: session.jobs.size }, 'builder disconnected; keeping its jobs for the grace period');
          session.machine.send({ type: 'DISCONNECTED' }); // its actor keeps the grace period
        }
      }
    }
  }

  /**
   * A known machine joins again: after a lost connection within the grace
   * period, or before the runner noticed the old connection is dead (then
   * the old stream is closed). The session, and its jobs, carry on with the
   * new stream; the builder's list of running jobs settles what was lost.
   */
  private rejoin(s: BuilderSession, cs: ControlSession): void {
    const { log, ownership } = this.o;
    const old = s.control;
    s.control = cs;
    if (old) old.fail(status.ABORTED, 'replaced by a newer connection of the same machine');
    if (s.machine.state === 'unreachable') s.machine.send({ type: 'RECONNECTED' });
    const running = new Set(cs.join.runningJobIds);
    const lost = [...s.jobs.keys()].filter((jobId) => !running.has(jobId));
    for (const jobId of lost) {
      ownership.release(jobId);
      s.finish(jobId, { kind: 'transient', errorMsg: `machine ${s.machine.id} joined again without job ${jobId}`, machineFault: true });
    }
    for (const jobId of running) if (!s.jobs.has(jobId)) this.abortOrphan(cs, jobId);
    log.info({ machine: cs.machineId, jobs: s.jobs.size, lostJobs: lost.length, replacedConnection: old !== null }, 'builder reconnected');
  }

  /** Tells a builder to stop a job the runner no longer has for it. */
  private abortOrphan(cs: ControlSession, jobId: string): void {
    this.o.log.info({ machine: cs.machineId, job: jobId }, 'builder runs a job the runner does not know; aborting it');
    cs.send({ kind: { $case: 'abort', value: { jobId, reason: 'the runner does not know this job (any more)' } } }).catch(() => {});
  }

  /** The machine's port for the scheduler: jobs go out under their wire ids. */
  private port(s: BuilderSession): BuilderPort {
    const wire = (jobId: string): string => `${this.runId}-${jobId}`;
    return {
      start: (job, report, progress) => {
        const jobId = wire(job.jobId);
        if (this.o.log.isLevelEnabled('debug')) this.o.log.debug({ machine: s.machine.id, job: jobId, drv: job.drvPath }, 'build order sent');
        s.start({ ...job, jobId }, report, progress);
      },
      abort: (jobId) => s.abort(wire(jobId)),
    };
  }

  /** The builder's machine is gone for good: its jobs are retried elsewhere. */
  private drop(s: BuilderSession, event: 'GRACE_EXPIRED' | 'REMOVE'): void {
    if (this.sessions.get(s.machine.id) !== s) return;
    this.sessions.delete(s.machine.id);
    for (const jobId of [...s.jobs.keys()]) {
      this.o.ownership.release(jobId);
      s.finish(jobId, { kind: 'transient', errorMsg: `machine ${s.machine.id} lost`, machineFault: true });
    }
    this.o.scheduler.removeMachine(s.machine.id, event);
    this.o.log.warn({ machine: s.machine.id, reason: event }, 'builder removed');
  }

  private job(ctx: CallContext, jobId: string) {
    const j = this.sessions.get(ctx.machineId)?.jobs.get(jobId);
    if (!j) throw new ProtocolError(status.NOT_FOUND, `job ${jobId} is not running`);
    return j;
  }

  /**
   * What a job's builder needs. A derivation whose inputs' paths are known
   * from the .drv files is resolved to a basic one (as Hydra's runner sends
   * it), and its requisites are the closure of its inputs; otherwise they
   * are the .drv's closure plus the outputs of the derivations in it, what
   * `nix-store --realise` on the builder needs to build only this step.
   * Dependencies first. `ordered` is null when there are more than `limit`.
   */
  private async requisites(job: StepJob, limit = Number.POSITIVE_INFINITY) {
    const { store } = this.o;
    const basic = await basicDerivation(store, parseDerivation(await readFile(store.realPath(job.drvPath), 'utf8')))
      .then((d) => (d && resolvable(d) ? d : null))
      .catch(() => null);
    let closure: string[];
    if (basic) {
      closure = await servePool(store).use((session) => session.queryClosure(basic.inputSrcs, false));
    } else {
      const own = new Set(job.outputs.flatMap((o) => (o.path ? [o.path] : [])));
      closure = (await servePool(store).use((session) => session.queryClosure([job.drvPath], true))).filter((p) => !own.has(p));
    }
    const byPath = new Map((await queryPathInfos(store, closure)).map((i) => [i.path, i]));
    const ordered = closure.length > limit ? null : exportOrder(closure, (p) => byPath.get(p)!.references).map((p) => wireInfo(byPath.get(p)!));
    return { resolved: basic ? toResolved(basic) : null, ordered, byPath };
  }

  async fetchRequisites(ctx: CallContext, req: { jobId: string }) {
    const j = this.job(ctx, req.jobId);
    const r = await this.requisites(j.job);
    j.requisites = r.byPath;
    return { requisites: r.ordered! };
  }

  async *fetchNar(ctx: CallContext, req: { jobId: string; storePath: string; accept?: Compression[]; moreStorePaths?: string[] }): AsyncIterable<NarChunk> {
    const j = this.job(ctx, req.jobId);
    const paths = [req.storePath, ...(req.moreStorePaths ?? [])];
    // Every path is checked before anything is sent.
    const infos = paths.map((p) => {
      const info = j.requisites?.get(p);
      if (!info) throw new ProtocolError(status.PERMISSION_DENIED, `${p} is not a requisite of job ${req.jobId}`);
      return info;
    });
    for (const info of infos) {
      const compression = chooseCompression(info.narSize, req.accept ?? []);
      yield { part: { $case: 'header', value: { info: wireInfo(info), compression } } };
      this.transfers.sentNarBytes += info.narSize;
      for await (const chunk of compressChunks(narChunks(this.o.store.realPath(info.path)), compression)) {
        this.transfers.sentWireBytes += chunk.length;
        yield { part: { $case: 'data', value: Buffer.from(chunk.buffer, chunk.byteOffset, chunk.byteLength) } };
      }
    }
  }

  async hasPath(_ctx: CallContext, req: { storePath: string }) {
    const r = await this.o.store.run('nix-store', ['--check-validity', req.storePath]);
    return { present: r.exitCode === 0 };
  }

  async stepStatus(ctx: CallContext, req: { jobId: string; busy: number }) {
    this.job(ctx, req.jobId).progress(req.busy as StepBusyCode);
    return {};
  }

  async streamLog(ctx: CallContext, jobId: string, chunks: AsyncIterable<{ data: Buffer; compression: Compression }>) {
    const s = this.sessions.get(ctx.machineId);
    const j = this.job(ctx, jobId);
    const file = buildLogPath(this.o.hydraDataDir, j.job.drvPath);
    // A job's first log stream starts the file afresh (a new attempt); a later
    // one (the builder reconnected mid-build) continues it. A build that
    // prints nothing has no file until it ends (see writeCompressedBuildLog).
    const out = new BuildLogWriter(file, this.logsStarted.has(j) ? 'a' : 'w');
    this.logsStarted.add(j);
    let written!: () => void;
    this.logWrites.set(j, Promise.all([this.logWrites.get(j), new Promise<void>((r) => (written = r))]));
    let bytes = 0;
    try {
      for await (const c of chunks) {
        if (c.compression !== Compression.COMPRESSION_NONE) throw new ProtocolError(status.INVALID_ARGUMENT, 'compressed logs are not accepted yet');
        bytes += c.data.length;
        await out.write(c.data);
        if (out.error) break;
      }
    } finally {
      await out.close();
      written();
    }
    if (out.error) {
      this.logLost(s!, jobId, out.error);
      throw new ProtocolError(status.ABORTED, `job ${jobId} is aborted: ${out.error.message}`);
    }
    return { bytesReceived: bytes };
  }

  /** Waits for the job's log streams to be written, at most LOG_WAIT_MS. */
  private async logWritten(j: RemoteJob): Promise<void> {
    const pending = this.logWrites.get(j);
    if (!pending) return;
    let timer: NodeJS.Timeout | undefined;
    await Promise.race([pending, new Promise<void>((r) => (timer = setTimeout(r, LOG_WAIT_MS)))]);
    clearTimeout(timer);
  }

  /**
   * The runner cannot keep a job's log (a full disk): the attempt is aborted
   * on its builder and retried, as Hydra aborts a step whose log it cannot
   * write, rather than recorded without its log.
   */
  private logLost(s: BuilderSession, jobId: string, err: DiskWriteError): void {
    const j = s.jobs.get(jobId);
    this.o.log.error({ machine: s.machine.id, job: jobId, drv: j?.job.drvPath, path: err.path, errno: err.errno, err: err.message }, 'cannot write the build log; aborting the step');
    if (!j) return; // ended meanwhile
    this.o.ownership.release(jobId);
    s.finish(jobId, { kind: 'transient', errorMsg: err.message, machineFault: false });
    s.control?.send({ kind: { $case: 'abort', value: { jobId, reason: `the runner cannot keep its log (${err.errno})` } } }).catch(() => {});
  }

  async uploadOutput(ctx: CallContext, h: OutputHeader, data: AsyncIterable<Uint8Array>) {
    const j = this.job(ctx, h.jobId);
    const out = j.job.outputs.find((o) => o.name === h.outputName);
    if (!out) throw new ProtocolError(status.INVALID_ARGUMENT, `job ${h.jobId} has no output ${h.outputName}`);
    if (!isStorePath(h.storePath) || (out.path !== null && out.path !== h.storePath)) {
      throw new ProtocolError(status.INVALID_ARGUMENT, `output ${h.outputName} must be ${out.path ?? 'a store path'}, not ${h.storePath}`);
    }
    if (h.narSize > j.job.maxOutputSize) throw new ProtocolError(status.INVALID_ARGUMENT, `output ${h.outputName} exceeds the output size limit`);
    // References may only point at what the build could see: its inputs and its own outputs.
    const siblings = new Set(j.job.outputs.flatMap((o) => (o.path ? [o.path] : [])));
    siblings.add(h.storePath);
    for (const r of h.references) {
      if (!siblings.has(r) && !j.requisites?.has(r)) throw new ProtocolError(status.INVALID_ARGUMENT, `output ${h.outputName} refers to ${r}, which the build could not see`);
    }
    if (!readableCompressions().includes(h.compression)) throw new ProtocolError(status.INVALID_ARGUMENT, `output ${h.outputName}: compression ${h.compression} is not one the runner reads`);
    const counted = async function* (this: void, t: BuilderService['transfers']): AsyncGenerator<Uint8Array> {
      for await (const c of data) {
        t.receivedWireBytes += c.length;
        yield c;
      }
    };
    const ca = out.path === null ? await this.floatingCheck(j.job.drvPath, h) : null;
    const nar = decompressChunks(counted(this.transfers), h.compression);
    const exportStream = writeExport([{ path: h.storePath, references: h.references, deriver: h.deriver ?? null, nar: ca ? checkedNar(nar, ca) : nar }]);
    try {
      const beforeImport = ca ? () => this.refuseMisplaced(ctx, j.job, h, ca) : undefined;
      await importVerified(this.o.store, exportStream, new Map([[h.storePath, { narHash: h.narHash, narSize: h.narSize }]]), { beforeImport });
    } catch (err) {
      if (err instanceof FloatingOutputMismatchError) throw new ProtocolError(status.INVALID_ARGUMENT, `output ${h.outputName}: ${err.message}`, { cause: err });
      // What the builder sent is at fault, not the runner: say so (nothing was imported).
      if (err instanceof NarHashMismatchError) {
        throw new ProtocolError(status.INVALID_ARGUMENT, `output ${h.outputName}: the NAR sent does not match the hash and size in its header (${err.actual.narHash}, ${err.actual.narSize} bytes)`, { cause: err });
      }
      if (err instanceof NixFormatError || err instanceof UnexpectedStorePathError) {
        throw new ProtocolError(status.INVALID_ARGUMENT, `output ${h.outputName}: ${err.message}`, { cause: err });
      }
      throw err;
    }
    j.uploaded.set(h.outputName, h.storePath);
    this.transfers.receivedNarBytes += h.narSize;
    return { bytesReceived: h.narSize, verified: true };
  }

  /**
   * The check a floating content-addressed output goes through as it is
   * uploaded (docs/CA-DERIVATIONS.md): null for an output whose path does not
   * follow from its content (deferred, impure).
   */
  private async floatingCheck(drvPath: string, h: OutputHeader): Promise<FloatingNarCheck | null> {
    const drv = parseDerivation(await readFile(this.o.store.realPath(drvPath)));
    const o = drv.outputs.get(h.outputName);
    if (!o || !isFloatingCA(o)) return null;
    const { method, algo } = outputHashMethod(o)!;
    return new FloatingNarCheck({ storePath: h.storePath, references: h.references, drvName: derivationName(drv, drvPath), outputName: h.outputName, method, algo });
  }

  /** Refuses (before anything is imported) a floating output whose content puts it elsewhere. */
  private refuseMisplaced(ctx: CallContext, job: StepJob, h: OutputHeader, ca: FloatingNarCheck): void {
    const r = ca.result();
    if (r.ok) return;
    this.o.log.error({ machine: ctx.machineId, job: job.jobId, drv: job.drvPath, output: h.outputName, path: h.storePath, expected: r.expected }, 'refusing a content-addressed output whose content does not match its path');
    throw new FloatingOutputMismatchError(h.storePath, r.expected);
  }

  /** What a builder is told of builder-direct uploads when it joins (none without usePresignedUploads). */
  presignedUploads() {
    const p = this.o.presigned;
    return p ? { compression: p.announcement.compression, partSize: p.announcement.partSize } : undefined;
  }

  /** The presigned uploads, and the output, of a job this builder owns (the server checked ownership). */
  private presignedFor(ctx: CallContext, jobId: string, storePath: string): PresignedUploads {
    const p = this.o.presigned;
    if (!p) throw new ProtocolError(status.FAILED_PRECONDITION, 'this runner takes no builder-direct uploads');
    const j = this.job(ctx, jobId);
    // Only an output this builder uploaded and the runner verified: its NAR hash is the runner's, not the builder's word.
    if (![...j.uploaded.values()].includes(storePath)) {
      throw new ProtocolError(status.PERMISSION_DENIED, `${storePath} is not a verified output of job ${jobId}`);
    }
    return p;
  }

  async requestPresignedUpload(ctx: CallContext, req: PresignedUploadRequest) {
    const p = this.presignedFor(ctx, req.jobId, req.storePath);
    try {
      const g = await p.grant(req.jobId, {
        storePath: req.storePath,
        fileSha256: req.fileSha256,
        fileSize: Number(req.fileSize),
        parts: req.parts.map((x) => ({ partNumber: x.partNumber, size: Number(x.size), md5: x.md5 })),
      });
      return { present: g.present, puts: g.puts.map((u) => ({ url: u.url, headers: u.headers })) };
    } catch (err) {
      if (err instanceof PresignedUploadError) throw new ProtocolError(status.INVALID_ARGUMENT, err.message, { cause: err });
      throw err;
    }
  }

  async completePresignedUpload(ctx: CallContext, req: PresignedUploadDone) {
    const p = this.presignedFor(ctx, req.jobId, req.storePath);
    try {
      await p.complete(req.jobId, req.storePath, req.etags);
    } catch (err) {
      if (err instanceof PresignedUploadError) {
        this.o.log.warn({ machine: ctx.machineId, job: req.jobId, path: req.storePath, err: err.message }, 'builder-direct upload refused');
        throw new ProtocolError(status.INVALID_ARGUMENT, err.message, { cause: err });
      }
      throw err;
    }
    this.o.log.info({ machine: ctx.machineId, job: req.jobId, path: req.storePath }, 'output published by builder-direct upload');
    return { published: true };
  }

  async complete(ctx: CallContext, req: CompleteRequest) {
    const s = this.sessions.get(ctx.machineId);
    const j = this.job(ctx, req.jobId);
    // Multipart uploads the builder began and never completed are discarded with the job.
    await this.o.presigned?.discard(req.jobId).catch(() => {});
    await this.logWritten(j);
    // The log's write may have failed meanwhile, which ended the job already.
    if (s?.jobs.get(req.jobId) !== j) return {};
    let outcome = toOutcome(req, j.uploaded, buildLogPath(this.o.hydraDataDir, j.job.drvPath), j.job.outputs.length);
    if (outcome.kind === 'success') {
      // The outputs were imported into the runner's store with their closures: the joint closure is read there.
      const closureSize = await jointClosureSize(this.o.store, outcome.outputs.map((o) => o.path)).catch(() => undefined);
      outcome = { ...outcome, closureSize };
    }
    if (s?.jobs.get(req.jobId) !== j) return {};
    s!.finish(req.jobId, outcome);
    return {};
  }
}

/** How long Complete waits for a log stream the builder has not ended (it ends it before completing). */
const LOG_WAIT_MS = 10_000;

/** Requisites beyond this many are left to FetchRequisites: an order stays well under gRPC's message size limit. */
const MAX_REQUISITES_IN_ORDER = 2000;

/** The NAR passed on unchanged, each chunk shown to the floating output's check. */
async function* checkedNar(nar: AsyncIterable<Uint8Array>, ca: FloatingNarCheck): AsyncGenerator<Uint8Array> {
  for await (const c of nar) {
    ca.update(c);
    yield c;
  }
}

/** A path's metadata as the protocol carries it. */
function wireInfo(i: StorePathInfo) {
  return { storePath: i.path, narHash: i.narHash.toString(), narSize: i.narSize, references: i.references, deriver: i.deriver ?? undefined };
}

function toOutcome(req: CompleteRequest, uploaded: ReadonlyMap<string, string>, logFile: string, outputCount: number): StepOutcome {
  const t = req.timings;
  const startTime = Number(t?.startTime ?? 0) || Math.floor(Date.now() / 1000);
  const stopTime = Number(t?.stopTime ?? 0) || startTime;
  // Determinism checks: the rounds the builder ran, when it reports them.
  const rounds = req.timesBuilt ? { timesBuilt: req.timesBuilt, isNonDeterministic: req.isNonDeterministic === true } : {};
  const failure = (s: 1 | 7 | 10 | 11 | 12): StepOutcome => ({ kind: 'failure', status: s, errorMsg: req.errorMsg, startTime, stopTime, logFile, ...rounds });
  switch (req.state) {
    case ResultState.RESULT_STATE_SUCCESS: {
      if (uploaded.size < outputCount) return { kind: 'transient', errorMsg: 'not every output was uploaded', machineFault: false };
      const ns = req.nixSupport;
      return {
        kind: 'success',
        startTime,
        stopTime,
        overheadMs: Number(t?.importMs ?? 0) + Number(t?.uploadMs ?? 0),
        logFile,
        ...rounds,
        outputs: req.outputs.map((o) => ({ name: o.name, path: uploaded.get(o.name) ?? o.storePath, narSize: Number(o.narSize), closureSize: Number(o.closureSize) })),
        nixSupport: {
          failed: ns?.failed ?? false,
          releaseName: ns?.releaseName ?? null,
          metrics: (ns?.metrics ?? []).map((m) => ({ name: m.name, value: m.value, unit: m.unit ?? null })),
          products: (ns?.products ?? []).map((p) => ({
            type: p.type, subtype: p.subtype, fileSize: p.fileSize === undefined ? null : Number(p.fileSize),
            sha256hash: p.sha256Hash ?? null, path: p.path, name: p.name, defaultPath: p.defaultPath ?? null,
          })),
        },
      };
    }
    case ResultState.RESULT_STATE_BUILD_FAILURE: return failure(1);
    case ResultState.RESULT_STATE_TIMED_OUT: return failure(7);
    case ResultState.RESULT_STATE_LOG_LIMIT_EXCEEDED: return failure(10);
    case ResultState.RESULT_STATE_NAR_SIZE_LIMIT_EXCEEDED: return failure(11);
    case ResultState.RESULT_STATE_NOT_DETERMINISTIC: return failure(12);
    case ResultState.RESULT_STATE_PREPARING_FAILURE:
    case ResultState.RESULT_STATE_IMPORT_FAILURE:
      return { kind: 'transient', errorMsg: req.errorMsg || 'builder could not prepare the build', machineFault: true };
    default:
      return { kind: 'transient', errorMsg: req.errorMsg || 'builder reported a retryable failure', machineFault: false };
  }
}

/** A readable message for an Error or a gRPC status object. */
function errorText(err: unknown): string {
  const e = err as { message?: unknown; details?: unknown } | null | undefined;
  return String(e?.message ?? e?.details ?? err);
}

/** A ping's PSI lines; null when it carries none (a host without PSI, or an older builder). */
function psiOf(p: Ping): PsiState | null {
  const f = (x: Ping['cpuPressure']): PsiFigures | null => (x ? { avg10: x.avg10, avg60: x.avg60, avg300: x.avg300 } : null);
  const psi: PsiState = {
    cpuSome: f(p.cpuPressure),
    memSome: f(p.memoryPressure),
    memFull: f(p.memoryFullPressure),
    ioSome: f(p.ioPressure),
    ioFull: f(p.ioFullPressure),
    irqFull: f(p.irqFullPressure),
  };
  return Object.values(psi).some((x) => x !== null) ? psi : null;
}

function specFromJoin(id: string, j: Join): MachineSpec {
  const t = j.thresholds;
  return {
    id,
    systems: new Set(j.systems),
    features: new Set([...j.supportedFeatures, ...j.mandatoryFeatures]),
    mandatoryFeatures: new Set(j.mandatoryFeatures),
    maxJobs: Math.max(1, j.maxJobs),
    speedFactor: j.speedFactor || 1,
    cpuCount: j.cpuCount || 1,
    bogomips: j.bogomips || 1,
    thresholds: {
      maxLoad1PerCpu: t?.maxLoad1PerCpu ?? DEFAULT_THRESHOLDS.maxLoad1PerCpu,
      maxCpuPressure: t?.maxCpuPressure ?? DEFAULT_THRESHOLDS.maxCpuPressure,
      maxMemPressure: t?.maxMemPressure ?? DEFAULT_THRESHOLDS.maxMemPressure,
      maxIoPressure: t?.maxIoPressure ?? DEFAULT_THRESHOLDS.maxIoPressure,
      minFreeDiskPercent: t?.minFreeDiskPercent ?? DEFAULT_THRESHOLDS.minFreeDiskPercent,
    },
  };
}
