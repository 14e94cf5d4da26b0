/**
 * The builder agent (`hydrant builder`): dials the runner, joins on the
 * control stream, pings, and runs the jobs it is ordered, in its own store
 * (a private one, or the host's). This module composes the parts:
 *
 * - connection.ts: the connection machine as a live actor (dial, join,
 *   ping, reconnect with backoff, a refusal is fatal) and the control stream;
 * - jobs.ts: the jobs held, each run in a slot through its phases:
 *   - inputs.ts: requisites, the missing NARs (FetchNar) and verified imports;
 *   - build.ts: the build under the order's limits (serve session or realise);
 *   - log-sender.ts: the build log, streamed live and kept while disconnected;
 *   - outputs.ts: output metadata, nix-support, and the uploads with their
 *     receipts and abort handling.
 *
 * A lost connection does not stop running jobs: their calls wait for the
 * next session and are retried in it.
 */
import type { ChannelCredentials } from '@grpc/grpc-js';
import type { BuilderConfig } from '../config/builder-config.ts';
import type { HydrantError } from '../errors/index.ts';
import { AgentConnection } from './connection.ts';
import type { JobContext, Transfers } from './job.ts';
import { Jobs } from './jobs.ts';
import type { NixStoreHandle } from '../nix/private-store.ts';

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

export class BuilderAgent {
  readonly #o: BuilderAgentOptions;
  readonly #connection: AgentConnection;
  readonly #jobs: Jobs;
  readonly #transfers: Transfers = { downloading: 0, uploading: 0 };

  constructor(options: BuilderAgentOptions) {
    this.#o = options;
    const log = options.log ?? (() => {});
    this.#connection = new AgentConnection(
      { config: options.config, token: options.token, store: options.store, log, credentials: options.credentials, onFatal: options.onFatal },
      {
        runningJobIds: () => this.#jobs.running(),
        onOrder: (order) => this.#jobs.order(order),
        onAbort: (jobId, reason) => this.#jobs.abort(jobId, reason),
        transfers: this.#transfers,
      },
    );
    const ctx: JobContext = { config: options.config, store: options.store, log, connection: this.#connection, transfers: this.#transfers };
    this.#jobs = new Jobs(ctx);
  }

  get machineId(): string {
    return this.#o.config.machineId;
  }

  /** Job ids currently held (accepted and not yet completed or aborted). */
  get runningJobs(): string[] {
    return this.#jobs.ids;
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
    await this.#jobs.drain(graceMs);
    this.#connection.stop();
    this.#connection.close();
  }

  /** Drops the control stream as if the connection broke (for tests). */
  dropConnection(): void {
    this.#connection.dropConnection();
  }
}
