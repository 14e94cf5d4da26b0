/**
 * The builder agent's connection to its runner: the connection machine
 * (src/machines/agent-connection-machine.ts) run as a live actor, with its
 * side effects here: the control stream (dial, Join, the runner's messages,
 * teardown) as the invoked `session` callback, pings as an action, and a
 * refusal reported to `onFatal`. A lost control stream is re-dialled with
 * capped exponential backoff and jitter and re-joined under the same machine
 * id; calls made through `withSession` wait for the next session and are
 * retried in it.
 */
import { hostname } from 'node:os';
import { status as grpcStatus, type ChannelCredentials, type ClientDuplexStream, type ServiceError } from '@grpc/grpc-js';
import { createActor, fromCallback, type Actor } from 'xstate';
import type { BuilderConfig } from '../config/builder-config.ts';
import { BuilderUnauthenticatedError, RunnerCertificateError, type HydrantError } from '../errors/index.ts';
import {
  agentConnectionMachine,
  agentConnectionState,
  type AgentConnectionEvent,
  type AgentConnectionState,
} from '../machines/agent-connection-machine.ts';
import { CLIENT_CERTIFICATE_MESSAGE } from '../protocol/auth.ts';
import type { BuildOrder, BuilderMessage, Compression, PresignedUploads, RunnerMessage } from '../protocol/gen/runner.ts';
import { createBuilderClient, PROTOCOL_VERSION, type BuilderClient } from '../protocol/server.ts';
import { certificateFailure } from '../protocol/tls.ts';
import { hostFacts, hostMetrics } from './host-metrics.ts';
import { JobAbortedError, sleep, type Transfers } from './calls.ts';
import type { NixStoreHandle } from '../nix/private-store.ts';

export interface AgentConnectionOptions {
  readonly config: BuilderConfig;
  readonly token: string;
  readonly store: NixStoreHandle;
  readonly log: (message: string) => void;
  readonly credentials?: ChannelCredentials;
  readonly onFatal?: (err: HydrantError) => void;
}

/** What the connection asks of the rest of the agent. */
export interface AgentConnectionHooks {
  /** Job ids still running here, listed in every Join (after a lost connection the runner keeps exactly these). */
  runningJobIds(): string[];
  onOrder(order: BuildOrder): void;
  onAbort(jobId: string, reason: string): void;
  readonly transfers: Transfers;
}

/** A call failed because the session went away: wait for the next one and retry. */
function retriable(err: unknown): boolean {
  const code = (err as Partial<ServiceError>)?.code;
  return code === grpcStatus.UNAVAILABLE || code === grpcStatus.UNAUTHENTICATED || code === grpcStatus.CANCELLED;
}

export class AgentConnection {
  readonly #o: AgentConnectionOptions;
  readonly #hooks: AgentConnectionHooks;
  readonly #stop = new AbortController();
  readonly #stopped: Promise<void>;
  #client: BuilderClient | undefined;
  #actor: Actor<typeof agentConnectionMachine> | undefined;
  #control: ClientDuplexStream<BuilderMessage, RunnerMessage> | undefined;
  /** What the runner reads in uploads (from the join). */
  #uploadCompressions: Compression[] = [];
  /** Builder-direct uploads, when the runner announced them in the last Joined. */
  #presignedUploads: PresignedUploads | undefined;
  /** Resolves when a session is joined; replaced when it is lost. */
  #joined!: Promise<void>;
  #resolveJoined!: () => void;
  #sessionGeneration = 0;
  #isJoined = false;
  #nixVersion: string | undefined;

  constructor(options: AgentConnectionOptions, hooks: AgentConnectionHooks) {
    this.#o = options;
    this.#hooks = hooks;
    this.#resetJoined();
    this.#stopped = new Promise((resolve) => this.#stop.signal.addEventListener('abort', () => resolve(), { once: true }));
  }

  /** Starts connecting; returns at once. */
  start(): void {
    this.#client ??= createBuilderClient(this.#o.config.server, this.#o.token, undefined, this.#o.credentials);
    if (this.#actor) return;
    const machine = agentConnectionMachine.provide({
      actors: { session: fromCallback<AgentConnectionEvent>(({ sendBack }) => this.#session(sendBack)) },
      actions: {
        ping: () => void this.#ping(),
        reportFatal: (_, { error }) => this.#o.onFatal?.(error as HydrantError),
      },
    });
    this.#actor = createActor(machine, {
      input: { reconnectMinMs: this.#o.config.reconnectMinMs, reconnectMaxMs: this.#o.config.reconnectMaxMs },
    });
    this.#actor.start();
  }

  /** The connection machine's state (connecting, joining, connected, backoff, stopped, fatal). */
  get state(): AgentConnectionState {
    return this.#actor ? agentConnectionState(this.#actor.getSnapshot().value) : 'connecting';
  }

  /** Sessions joined. */
  get joins(): number {
    return this.#actor?.getSnapshot().context.joins ?? 0;
  }

  get joined(): boolean {
    return this.#isJoined;
  }

  get client(): BuilderClient {
    return this.#client!;
  }

  /** What the runner reads in uploads, as it said in the last Joined. */
  get uploadCompressions(): readonly Compression[] {
    return this.#uploadCompressions;
  }

  get presignedUploads(): PresignedUploads | undefined {
    return this.#presignedUploads;
  }

  /** Resolves once a session is joined. */
  waitJoined(): Promise<void> {
    return this.#joined;
  }

  /** Stops connecting and tears the session down; calls waiting for one give up. */
  stop(): void {
    this.#stop.abort();
    if (this.#actor?.getSnapshot().status === 'active') this.#actor.send({ type: 'STOP' });
    this.#teardown();
  }

  /** Closes the client once the agent is done with it. */
  close(): void {
    this.#client?.close();
  }

  /** Drops the control stream as if the connection broke (for tests). */
  dropConnection(): void {
    this.#control?.cancel();
  }

  /** Sends on the control stream; lost with a broken stream (the reconnect re-joins). */
  sendControl(m: BuilderMessage): void {
    try {
      this.#control?.write(m);
    } catch {
      // the stream broke; the reconnect re-joins
    }
  }

  /**
   * Runs a unary or streaming call in the current session; when the session
   * is lost (UNAVAILABLE, UNAUTHENTICATED, CANCELLED) waits for the next one
   * and tries again. Gives up once `aborted()` or the agent stopped.
   */
  async withSession<T>(aborted: () => boolean, fn: (client: BuilderClient) => Promise<T>): Promise<T> {
    for (let attempt = 0; ; attempt++) {
      if (aborted()) throw new JobAbortedError();
      await Promise.race([this.#joined, this.#stopped]);
      if (this.#stop.signal.aborted && !this.#control) throw new JobAbortedError();
      if (aborted()) throw new JobAbortedError();
      const generation = this.#sessionGeneration;
      try {
        return await fn(this.#client!);
      } catch (err) {
        if (aborted()) throw new JobAbortedError();
        if (!retriable(err) || attempt >= 20) throw err;
        // Same session still up (a transient failure): back off a little.
        if (generation === this.#sessionGeneration) await sleep(Math.min(5000, 100 * 2 ** attempt), this.#stop.signal);
      }
    }
  }

  #resetJoined(): void {
    this.#joined = new Promise((resolve) => {
      this.#resolveJoined = resolve;
    });
  }

  /**
   * The `session` actor: dials the control stream, writes the Join (OPENED),
   * hands the runner's messages on (JOINED, CONFIG; orders and aborts to the
   * agent) and reports its end (LOST, or REFUSED when no retry can help).
   * Its cleanup, run when the machine leaves `session`, tears the stream down.
   */
  #session(sendBack: (e: AgentConnectionEvent) => void): () => void {
    let closed = false;
    let ended = false;
    const end = (err?: unknown): void => {
      if (ended || closed) return;
      ended = true;
      if (err !== undefined) {
        const fatal = this.#refusal(err);
        if (fatal) {
          sendBack({ type: 'REFUSED', error: fatal });
          return;
        }
        this.#log(`control stream: ${(err as Error).message}`);
      }
      sendBack({ type: 'LOST' });
    };
    void (async () => {
      try {
        const [facts, nixVersion] = await Promise.all([hostFacts(), this.#nixVersionString()]);
        if (closed) return;
        const cfg = this.#o.config;
        const stream = this.#client!.client.control();
        this.#control = stream;
        stream.on('error', (e: Error) => end(e));
        stream.on('end', () => end());
        stream.on('close', () => end());
        stream.on('data', (m: RunnerMessage) => {
          try {
            this.#onMessage(m, sendBack);
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
              runningJobIds: this.#hooks.runningJobIds(),
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
        if (!closed && !ended) sendBack({ type: 'OPENED' });
      } catch (err) {
        end(err);
      }
    })();
    return () => {
      closed = true;
      this.#teardown();
    };
  }

  #onMessage(m: RunnerMessage, sendBack: (e: AgentConnectionEvent) => void): void {
    switch (m.kind?.$case) {
      case 'joined': {
        const j = m.kind.value;
        if (j.machineId !== this.#o.config.machineId) this.#log(`runner registered us as ${j.machineId}`);
        this.#client!.setSession(j.sessionId);
        this.#sessionGeneration++;
        this.#uploadCompressions = j.uploadCompressions;
        this.#presignedUploads = j.presignedUploads;
        sendBack({ type: 'JOINED', pingIntervalMs: j.pingIntervalMs });
        this.#isJoined = true;
        this.#resolveJoined();
        this.#log(`joined as ${j.machineId}`);
        return;
      }
      case 'build':
        this.#hooks.onOrder(m.kind.value);
        return;
      case 'abort':
        this.#hooks.onAbort(m.kind.value.jobId, m.kind.value.reason);
        return;
      case 'config':
        if (m.kind.value.pingIntervalMs) sendBack({ type: 'CONFIG', pingIntervalMs: m.kind.value.pingIntervalMs });
        return;
      default:
        return;
    }
  }

  async #ping(): Promise<void> {
    const stream = this.#control;
    if (!stream) return;
    try {
      const m = await hostMetrics({ buildDir: this.#o.config.buildDir, storeDir: this.#o.store.realPath('/nix/store') });
      if (this.#control !== stream) return;
      const t = this.#hooks.transfers;
      stream.write({
        kind: {
          $case: 'ping',
          value: {
            load1: m.load1,
            load5: m.load5,
            load15: m.load15,
            memoryUsedBytes: Math.max(0, m.memTotalBytes - m.memAvailableBytes),
            // Unset when the host has no PSI file: the runner then shows no pressure (Hydra's UI hides it).
            cpuPressure: m.psi.cpuSome ?? undefined,
            memoryPressure: m.psi.memSome ?? undefined,
            ioPressure: m.psi.ioSome ?? undefined,
            buildDirFreePercent: m.buildDirFreePercent,
            storeFreePercent: m.storeFreePercent,
            transfers: { downloading: t.downloading, uploading: t.uploading, substituting: 0 },
            memoryFullPressure: m.psi.memFull ?? undefined,
            ioFullPressure: m.psi.ioFull ?? undefined,
            irqFullPressure: m.psi.irqFull ?? undefined,
            memoryTotalBytes: m.memTotalBytes,
          },
        },
      });
    } catch (err) {
      this.#log(`ping: ${(err as Error).message}`);
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

  #log(message: string): void {
    this.#o.log(message);
  }
}
