/**
 * Small helpers the builder agent's connection and its jobs share: the
 * transfer counters reported in pings, the error that says a job was
 * aborted, a cancellable sleep and a unary gRPC call as a promise. Kept apart
 * from job.ts so that the connection does not import the job record that
 * refers to it.
 */
import type { ServiceError } from '@grpc/grpc-js';

/** Transfers in flight (downloads, uploads), reported in pings. */
export interface Transfers {
  downloading: number;
  uploading: number;
}

/** The job was aborted (by the runner, or the agent shutting down): nothing is reported for it. */
export class JobAbortedError extends Error {}

export function sleep(ms: number, signal?: AbortSignal): Promise<void> {
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

export function unary<Res>(start: (cb: (err: ServiceError | null, res: Res) => void) => unknown): Promise<Res> {
  return new Promise((resolve, reject) => {
    start((err, res) => (err ? reject(err) : resolve(res)));
  });
}
