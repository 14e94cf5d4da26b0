/**
 * The build itself: the job's derivation built under the order's limits,
 * over a serve session (BuildDerivation) when its inputs are known from the
 * .drv files, else with `nix-store --realise`; its log goes to a LogSender.
 */
import type { ChildProcess } from 'node:child_process';
import { readFile } from 'node:fs/promises';
import { BuilderJobError } from '../errors/index.ts';
import { basicDerivation } from '../nix/basic-derivation.ts';
import { parseDerivation, type Derivation } from '../nix/derivation.ts';
import { ResultState, type BuildOrder } from '../protocol/gen/runner.ts';
import { fromResolved } from '../protocol/resolved-derivation.ts';
import { JobAbortedError, type Job, type JobContext } from './job.ts';
import { LOG_BACKLOG_BYTES, LogSender } from './log-sender.ts';
import { runNixBuild, type NixBuildHandle, type NixBuildLimits } from './nix-build.ts';
import { ServeBuilds } from './serve-build.ts';

/** How many derivations' logs are kept from builds whose attempt was aborted (the oldest is dropped beyond). */
const KEPT_LOGS = 16;

/**
 * Runs jobs' builds; holds the serve sessions they use, and the logs of
 * builds whose attempt was aborted (or failed) after Nix had made the outputs valid:
 * the next attempt of that derivation finds them valid and builds nothing,
 * and sends that log as its own (Hydra would record an empty log).
 */
export class Builds {
  readonly #ctx: JobContext;
  /** Derivation → the log of the build that made its outputs here, for an attempt that reported no success (newest last). */
  readonly #keptLogs = new Map<string, Buffer>();
  /** Build sessions, one per slot in use (the agent's slots bound how many run). */
  #serveBuilds: ServeBuilds | undefined;

  constructor(ctx: JobContext) {
    this.#ctx = ctx;
  }

  /**
   * Runs the build with the order's limits, streaming its log; resolves on
   * success with output paths. Over a serve session when the derivation's
   * inputs are known from the .drv files, else with `nix-store --realise`.
   */
  async run(job: Job): Promise<Map<string, string>> {
    const { order } = job;
    const limits: NixBuildLimits = {
      maxSilentTime: order.limits?.maxSilentTimeS ?? 0,
      buildTimeout: order.limits?.buildTimeoutS ?? 0,
      maxLogSize: Number(order.limits?.maxLogSize ?? 0) || Number.POSITIVE_INFINITY,
      repeats: order.repeats ?? 0,
      enforceDeterminism: order.enforceDeterminism === true,
    };
    const logs = new LogSender(this.#ctx.connection, job);
    // What the build logged (its last LOG_BACKLOG_BYTES), kept with the job if Nix made the outputs.
    const seen: Buffer[] = [];
    let seenBytes = 0;
    // Nix stops the build at the log limit; nothing past it is forwarded either way.
    let logBytes = 0;
    const onLog = (chunk: Buffer): void => {
      const room = limits.maxLogSize - logBytes;
      if (room <= 0) return;
      logBytes += chunk.length;
      const part = chunk.length > room ? chunk.subarray(0, room) : chunk;
      seen.push(part);
      seenBytes += part.length;
      while (seenBytes > LOG_BACKLOG_BYTES && seen.length > 1) seenBytes -= seen.shift()!.length;
      logs.write(part);
    };
    const store = this.#ctx.store;
    const basic = await this.#basicDerivation(order);
    const handle: NixBuildHandle = basic
      ? (this.#serveBuilds ??= new ServeBuilds(store)).run(order.drvPath, basic, limits, onLog)
      : runNixBuild(order.drvPath, limits, onLog, process.env, (cmd, args) => store.spawn(cmd, args) as ChildProcess);
    job.build = handle;
    if (job.aborted) handle.kill();
    const result = await handle.done;
    job.build = undefined;
    if (result.kind === 'built' && !result.alreadyValid) job.builtLog = Buffer.concat(seen);
    if (result.kind === 'built' && result.alreadyValid) {
      // An aborted attempt's build made the outputs: its log is this attempt's.
      const earlier = this.#keptLogs.get(order.drvPath);
      if (earlier !== undefined) {
        this.#keptLogs.delete(order.drvPath);
        job.builtLog = earlier;
        if (logBytes === 0) onLog(earlier);
      }
    }
    await logs.finish();
    if (job.aborted) throw new JobAbortedError();
    if (result.kind !== 'error' && result.timesBuilt !== undefined) job.rounds = { timesBuilt: result.timesBuilt, isNonDeterministic: result.isNonDeterministic };
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

  /** Keeps the log of the build that made a job's outputs when the job reports no success, for the derivation's next attempt. */
  keepLog(job: Job): void {
    if (job.builtLog === undefined) return;
    const drv = job.order.drvPath;
    this.#keptLogs.delete(drv);
    this.#keptLogs.set(drv, job.builtLog);
    for (const oldest of this.#keptLogs.keys()) {
      if (this.#keptLogs.size <= KEPT_LOGS) break;
      this.#keptLogs.delete(oldest);
    }
  }

  /** The order's derivation as BuildDerivation takes it, or null when it must be realised. */
  async #basicDerivation(order: BuildOrder): Promise<Derivation | null> {
    if (order.resolved) return fromResolved(order.resolved);
    try {
      const text = order.drv.length > 0 ? Buffer.from(order.drv).toString('utf8') : await readFile(this.#ctx.store.realPath(order.drvPath), 'utf8');
      return await basicDerivation(this.#ctx.store, parseDerivation(text));
    } catch {
      return null; // nix-store --realise reports what is wrong
    }
  }
}
