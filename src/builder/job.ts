/**
 * What the builder agent's parts share about one job: its record and its
 * context (the helpers they share with the connection are in calls.ts).
 */
import type { BuilderConfig } from '../config/builder-config.ts';
import type { BuildOrder, StepBusy } from '../protocol/gen/runner.ts';
import type { AgentConnection } from './connection.ts';
import type { NixBuildHandle } from './nix-build.ts';
import type { NixStoreHandle } from '../nix/private-store.ts';
import type { Transfers } from './calls.ts';

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
  /** Determinism checks: the rounds Nix ran, once the build ended (reported with the result). */
  rounds?: { timesBuilt?: number; isNonDeterministic?: boolean };
  /** Cancels the job's calls in flight (FetchNar, UploadOutput), run on abort. */
  readonly cancels: Set<() => void>;
  done?: Promise<void>;
  /**
   * The log of the build that made the job's outputs, once its build ended
   * (its own, or an earlier attempt's that Nix found valid): kept if the job
   * is aborted, for the next attempt of the derivation (see Builds).
   */
  builtLog?: Buffer;
  /** The current phase, and the last one reported; a timer reports the current one once it lasted. */
  phase: StepBusy;
  reportedPhase: StepBusy | null;
  phaseTimer: NodeJS.Timeout | null;
}

export { JobAbortedError, sleep, unary, type Transfers } from './calls.ts';
