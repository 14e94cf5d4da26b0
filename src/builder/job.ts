/**
 * What the builder agent's parts share about one job: its record, the error
 * that says it was aborted, and small helpers (a cancellable sleep, a unary
 * call as a promise).
 */
import type { ServiceError } from '@grpc/grpc-js';
import type { BuilderConfig } from '../config/builder-config.ts';
import type { BuildOrder, StepBusy } from '../protocol/gen/runner.ts';
import type { AgentConnection } from './connection.ts';
import type { NixBuildHandle } from './nix-build.ts';
import type { NixStoreHandle } from './private-store.ts';

/** What a job's inputs, build, log and outputs work with. */
export interface JobContext {
  readonly config: BuilderConfig;
  /** The store jobs are built in (PrivateStore, or hostStore). */
  readonly store: NixStoreHandle;
  readonly log: (message: string) => void;
  readonly connection: AgentConnection;
  readonly transfers: Transfers;
}

export interface Job {
  readonly order: BuildOrder;
  aborted: boolean;
  build?: NixBuildHandle;
  /** Cancels the job's calls in flight (FetchNar, UploadOutput), run on abort. */
  readonly cancels: Set<() => void>;
  done?: Promise<void>;
  /** The current phase, and the last one reported; a timer reports the current one once it lasted. */
  phase: StepBusy;
  reportedPhase: StepBusy | null;
  phaseTimer: NodeJS.Timeout | null;
}

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
