/**
 * Log sending: a job's build log streams live to the runner (StreamLog),
 * plain so that it can be followed, and survives a lost connection.
 */
import { status, type ClientWritableStream, type ServiceError } from '@grpc/grpc-js';
import { Compression, type LogChunk, type LogReceipt } from '../protocol/gen/runner.ts';
import type { AgentConnection } from './connection.ts';
import { sleep, type Job } from './job.ts';

/** Log output kept per job while no session is joined (the oldest is dropped beyond it). */
export const LOG_BACKLOG_BYTES = 1024 * 1024;

/**
 * A job's live log: one StreamLog call, re-opened in the next session when the
 * connection is lost (the runner appends to what it already has). Output
 * while no session is joined is kept, up to LOG_BACKLOG_BYTES, and sent first
 * once one is.
 */
export class LogSender {
  #stream: ClientWritableStream<LogChunk> | undefined;
  /** Streams whose first chunk (the one naming the job) has been sent. */
  readonly #named = new WeakSet<ClientWritableStream<LogChunk>>();
  readonly #pending: Promise<unknown>[] = [];
  readonly #backlog: Buffer[] = [];
  #backlogBytes = 0;

  constructor(
    private readonly connection: AgentConnection,
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
    s = this.#call((err) => {
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

  /** A new StreamLog call in the current session, if one is joined. */
  #call(cb: (err: ServiceError | null, res?: LogReceipt) => void): ClientWritableStream<LogChunk> | undefined {
    if (!this.connection.joined) return undefined;
    return this.connection.client.client.streamLog((err, res) => cb(err, res));
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
    if (!this.job.aborted && this.#stream === undefined && this.#backlog.length > 0 && !this.#open()) {
      // The build ended while no session was joined: its last output waits for
      // the next session, as the job's Complete does, instead of being dropped.
      await this.connection
        .withSession(
          () => this.job.aborted,
          async () => {
            if (this.#stream === undefined && !this.#open()) throw Object.assign(new Error('no session'), { code: status.UNAVAILABLE });
          },
        )
        .catch(() => {}); // aborted or stopped: the log is not wanted any more
    }
    const s = this.#stream;
    if (s && !this.job.aborted) {
      try {
        s.end();
      } catch {
        // already closed
      }
    } else s?.cancel();
    // The bound's timer is cleared once the streams are done: left running, it
    // would hold a stopping builder for up to 10 s (and a kill would lose its exit work).
    const bound = new AbortController();
    await Promise.race([Promise.allSettled(this.#pending), sleep(10_000, bound.signal)]);
    bound.abort();
  }
}
