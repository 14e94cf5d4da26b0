import { readFile } from 'node:fs/promises';
import { hostSystem } from '../nix/host-system.ts';
import { DEFAULT_THRESHOLDS, IDLE_LOAD } from '../actors/machine-record.ts';
import type { Server } from '@grpc/grpc-js';
import { LocalNixBuilder } from '../builder/local-builder.ts';
import { hostStore } from '../nix/private-store.ts';
import { resolvedRootsDir } from '../nix/resolved-roots.ts';
import { CaResolver } from '../actors/ca-resolver.ts';
import { CaRealisations } from '../actors/ca-realisations.ts';
import type { StepPreparer } from '../actors/prepare-step.ts';
import { localStoreOnly, SubstitutingPreparer, type SubstitutingPreparerOptions } from '../actors/substituting-preparer.ts';
import { Substituter } from '../cache/substituter.ts';
import type { NixStoreHandle } from '../nix/private-store.ts';
import { queryPathInfos } from '../nix/transfer.ts';
import { TokenAuth } from '../protocol/auth.ts';
import { JobOwnership } from '../protocol/job-ownership.ts';
import { BuilderService } from '../protocol/runner-service.ts';
import { createRunnerServer, listen } from '../protocol/server.ts';
import { RejectionLog } from '../protocol/rejection-log.ts';
import { runnerGrpcCredentials } from './grpc-credentials.ts';
import { loadRunnerConfig, redactUrl, type RunnerConfig } from '../config/runner-config.ts';
import { HYDRA_CHANNELS } from '../db/channels.ts';
import { openDatabase, type Database } from '../db/connect.ts';
import { NotificationListener } from '../db/listener.ts';
import { RunnerLock, type LockState } from '../db/runner-lock.ts';
import { QueueRunnerLockFile } from './queue-runner-lock-file.ts';
import { RunnerLockedError, type HydrantError } from '../errors/index.ts';
import { PgSchedulerDb } from '../db/scheduler-db.ts';
import { ensureSchema } from '../db/schema.ts';
import { summarizeDerivation } from '../nix/derivation-summary.ts';
import { LocalNixStore } from '../nix/local-store.ts';
import type { Logger } from '../util/logger.ts';
import { WorkerPool } from '../workers/pool.ts';
import { withRoom } from '../workers/with-room.ts';
import type { BinaryCache } from '../cache/binary-cache.ts';
import { openCaches } from '../cache/open-caches.ts';
import { presignedUploads } from '../cache/presigned-uploads.ts';
import { validInCaches } from '../cache/cache-valid-store.ts';
import { defaultRootsDir } from '../publish/gc-roots.ts';
import { OutputPublisher } from '../publish/output-publisher.ts';
import { BackupUploader, type BackupTarget, resolveBackupTargets } from '../publish/backups.ts';
import { backupsHandler } from '../http/routes/backups.ts';
import { Lifecycle } from './lifecycle.ts';
import type { SchedulerStore } from '../actors/model.ts';
import { Router } from '../http/router.ts';
import { startHttpApi, writeGuard, type HttpApi } from '../http/server.ts';
import { putBuild } from '../http/routes/build.ts';
import { metricsHandler } from '../http/routes/metrics.ts';
import { registerViewerRoutes } from '../http/viewer-routes.ts';
import { createRunnerMetrics, type RunnerMetrics } from '../metrics/runner-metrics.ts';
import { startRunnerRuntime, type RunnerRuntime } from './runner-runtime.ts';

export interface ServeOptions {
  configPath?: string;
  overrides?: Record<string, unknown>;
  log: Logger;
  /** Install SIGTERM/SIGINT/SIGHUP handlers (off in tests). */
  handleSignals?: boolean;
}

/**
 * The runner daemon: configuration, database, schema check, the runner lock,
 * the LISTEN connection, the worker pool, and the scheduler runtime, with
 * the lifecycle starting → running → draining → stopped. SIGTERM/SIGINT
 * drain (no new dispatch; running steps get shutdownGraceInS, then are
 * aborted and their rows written); SIGHUP reloads the configuration.
 */
export class RunnerDaemon {
  readonly lifecycle = new Lifecycle();
  private db: Database | null = null;
  private lock: RunnerLock | null = null;
  private lockFile: QueueRunnerLockFile | null = null;
  private listener: NotificationListener | null = null;
  private pool: WorkerPool | null = null;
  private caches: readonly BinaryCache[] = [];
  private substituter: Substituter | null = null;
  private backups: BackupUploader | null = null;
  private signalHandlers: [NodeJS.Signals, () => void][] = [];
  runtime: RunnerRuntime | null = null;
  private grpc: Server | null = null;
  private builderService: BuilderService | null = null;
  grpcPort = 0;
  http: HttpApi | null = null;
  private metrics: RunnerMetrics | null = null;
  private readonly startedAt = Date.now();
  config: RunnerConfig;
  /** The process's exit code once stopped: non-zero when it stopped because it had to (lock taken, database gone). */
  exitCode = 0;

  constructor(private readonly options: ServeOptions) {
    this.config = loadRunnerConfig(options.configPath, options.overrides);
  }

  get database(): Database {
    if (!this.db) throw new Error('database not open');
    return this.db;
  }

  async start(): Promise<void> {
    const { log } = this.options;
    const c = this.config;
    log.info({ state: 'starting' }, 'runner starting');
    if (c.withoutEffect.length > 0) {
      log.warn({ keys: c.withoutEffect }, `configuration keys of Hydra's queue runner that have no effect in Hydrant (docs/OPERATIONS.md): ${c.withoutEffect.join(', ')}`);
    }
    this.db = await openDatabase(c);
    log.info({ db: redactUrl(this.db.url), embedded: this.db.embedded }, 'database connected');
    const schema = await ensureSchema(this.db.pool);
    log.info({ created: schema.created, version: schema.version }, schema.created ? 'created Hydra schema' : 'Hydra schema accepted');
    const lock = (this.lock = new RunnerLock({ url: this.db.url, giveUpAfterMs: c.dbGiveUpAfterInS * 1000, heartbeatMs: c.dbHeartbeatInS * 1000 }));
    let standby = false;
    try {
      await lock.acquire();
    } catch (err) {
      if (!(c.standby && err instanceof RunnerLockedError)) throw err;
      standby = true;
    }
    if (!standby) await this.takeLockFile();
    const pool = (this.pool = new WorkerPool({ threads: c.workerThreads }));
    const store = new LocalNixStore(async (drvPath, bytes) => summarizeDerivation(drvPath, await withRoom(pool, () => pool.parseDerivation(bytes))));
    const caches = (this.caches = await openCaches(c.remoteStoreAddr, pool, { awsCredentialsFile: c.awsCredentialsFile }));
    for (const cache of caches) log.info({ cache: cache.location, compression: cache.store.compression, publicKey: cache.publicKey ?? null }, 'binary cache opened');
    // Backup buckets' URIs and keys are checked now; their queue resumes once the runner runs.
    const runnerKey = caches.find((cache) => cache.store.secretKeyFile !== undefined)?.store.secretKeyFile;
    const backupTargets = resolveBackupTargets(c.s3Backup, runnerKey);
    const realisations = new CaRealisations({
      readDerivation: async (drvPath) => pool.parseDerivation(await readFile(hostStore.realPath(drvPath))),
      references: async (path) => (await queryPathInfos(hostStore, [path]))[0]!.references,
    });
    const finisher = new OutputPublisher({ pool, caches, rootsDir: c.rootsDir ?? defaultRootsDir(), log, realisations: (drvPath, outputs, floating) => realisations.of(drvPath, outputs, floating) });
    const metrics = (this.metrics = createRunnerMetrics({
      scheduler: () => this.runtime?.scheduler ?? null,
      monitor: () => this.runtime?.monitor ?? null,
      pool,
      db: this.db.pool,
      uploads: finisher.stats,
      pings: () => this.builderService?.pings ?? new Map(),
      transfers: () => this.builderService?.transfers ?? { sentNarBytes: 0, sentWireBytes: 0, receivedNarBytes: 0, receivedWireBytes: 0 },
      startedAt: this.startedAt,
      state: () => this.lifecycle.state,
      backups: backupTargets.length > 0 ? () => this.backups?.totals() ?? [] : undefined,
      substituters: () => this.substituter?.stats() ?? [],
    }));
    // Up before a standby waits, so that its status shows it waiting.
    await this.startHttp(store);
    if (this.options.handleSignals) this.installSignals();
    if (standby) {
      this.lifecycle.send('STANDBY');
      log.info({ state: 'standby' }, 'another runner holds the database; waiting as a hot standby');
      if (!(await lock.standby())) return; // stopped while waiting
      await this.takeLockFile();
      if ((this.lifecycle.state as string) !== 'standby') return void (await this.lockFile?.release()); // stopped meanwhile
      log.warn('the active runner is gone; taking over');
    }
    lock.on('state', (next: LockState, prev: LockState, err?: Error) => this.lockChanged(next, prev, err));
    // Its reconnects re-scan the queue; an outage of a minute must not leave it 30 s behind.
    this.listener = new NotificationListener({ url: this.db.url, channels: HYDRA_CHANNELS, maxBackoffMs: 2000 });
    this.listener.on('disconnected', (e: Error) => log.warn({ err: e.message }, 'LISTEN connection lost; reconnecting'));
    this.listener.on('reconnected', () => log.info('LISTEN connection back; re-polling the queue'));
    await this.listener.start();
    const schedulerDb = new PgSchedulerDb(this.db.pool);
    const preparer = new CaResolver({
      pool, store: hostStore, valid: store, db: schedulerDb, rootsDir: resolvedRootsDir(c.rootsDir ?? defaultRootsDir()), log, realisations,
      publish: async (rs) => {
        for (const cache of caches) await cache.publishRealisations(rs);
      },
      publishOutputs: (paths) => finisher.alreadyBuilt(paths),
    });
    const staleRoots = await preparer.clearStaleRoots();
    if (staleRoots > 0) log.info({ roots: staleRoots }, 'removed resolved-derivation roots a previous run left');
    this.runtime = await startRunnerRuntime({
      preparer: await this.withSubstitution(preparer, pool, hostStore, store, caches.length, { valid: validInCaches(store, caches), publish: (paths) => finisher.alreadyBuilt(paths) }, log),
      config: c, db: schedulerDb, store: validInCaches(store, caches), listener: this.listener, log, finisher, onDispatch: metrics.observeDispatch,
      gate: { whenOpen: () => lock.whenHeld() }, maxPendingWrites: c.maxPendingDbWrites,
    });
    await this.startBackups(pool, backupTargets);
    if (c.localBuilderJobs > 0) this.addLocalBuilder();
    if (c.tokenPaths.length > 0) await this.startGrpc();
    else log.warn('no tokenPaths configured: the builder protocol (gRPC) is not started');
    if ((this.lifecycle.state as string) !== 'starting' && this.lifecycle.state !== 'standby') return; // stopped meanwhile
    this.lifecycle.send('STARTED');
    log.info({ state: 'running' }, 'runner running');
    // The lock may have been lost while starting.
    if (lock.state !== 'held') this.lockChanged(lock.state, 'held');
  }

  /**
   * With useSubstitutes and substituters: steps are looked up in the caches
   * first, then resolved (docs/SUBSTITUTION.md). Without: outputs in the
   * runner's store but missing from a cache are still published from the
   * store rather than built ("Without useSubstitutes"); with no cache there
   * is nothing they can be missing from.
   */
  private async withSubstitution(
    next: StepPreparer,
    pool: WorkerPool,
    hostStore: NixStoreHandle,
    store: Pick<SchedulerStore, 'queryValid'>,
    cacheCount: number,
    built: Pick<SubstitutingPreparerOptions, 'valid' | 'publish'>,
    log: Logger,
  ): Promise<StepPreparer> {
    const c = this.config;
    if (!c.useSubstitutes || c.substituters.length === 0) {
      return cacheCount === 0 ? next : new SubstitutingPreparer({ substituter: localStoreOnly(store), next, ...built, clock: { now: Date.now }, log });
    }
    const substituter = await Substituter.open({
      urls: c.substituters, trustedPublicKeys: c.trustedPublicKeys, pool, store: hostStore, queryValid: (paths) => store.queryValid(paths), log,
      positiveTtlMs: c.substitutePositiveTtlInS * 1000, negativeTtlMs: c.substituteNegativeTtlInS * 1000, backoffMs: c.substituterBackoffInS * 1000, awsCredentialsFile: c.awsCredentialsFile,
    });
    this.substituter = substituter;
    log.info({ substituters: c.substituters }, 'substitution on');
    // The substituter fetches what the store lacks; the preparer publishes what a cache lacks (docs/SUBSTITUTION.md, "Publishing").
    return new SubstitutingPreparer({ substituter, next, ...built, clock: { now: Date.now }, log });
  }

  /**
   * The runner lock's connection came and went: pause while the database is
   * away (results wait for it), resume and re-scan once the lock is re-taken,
   * stop with a non-zero exit code if another runner took it or the database
   * stayed away past dbGiveUpAfterInS.
   */
  private lockChanged(next: LockState, prev: LockState, err?: Error): void {
    const { log } = this.options;
    const rt = this.runtime;
    if (next === 'reconnecting') {
      log.warn({ err: err?.message }, 'lost the database connection holding the runner lock; pausing dispatch and reconnecting');
      rt?.interrupted();
      if (this.lifecycle.state === 'running') this.lifecycle.send('LOCK_LOST');
    } else if (next === 'held' && prev === 'reconnecting') {
      log.info('runner lock re-taken; resuming and re-scanning the queue');
      if (this.lifecycle.state === 'reconnecting') this.lifecycle.send('LOCK_RETAKEN');
      rt?.recover().catch((e: unknown) => log.error({ err: String((e as Error)?.message ?? e) }, 'recovery after the outage failed'));
    } else if (next === 'taken' || next === 'gaveUp') {
      log.fatal({ code: (err as HydrantError | undefined)?.code, err: err?.message }, next === 'taken' ? 'another runner took the runner lock; stopping' : 'giving up on the database; stopping');
      this.exitCode = 1;
      void this.stop();
    }
  }

  /** Backup buckets (`[[s3Backup]]`): their targets checked now, their queue resumed. */
  private async startBackups(pool: WorkerPool, targets: readonly BackupTarget[]): Promise<void> {
    const c = this.config;
    if (targets.length === 0) return;
    this.backups = new BackupUploader({ db: this.database.pool, dbUrl: this.database.url, pool, targets, awsCredentialsFile: c.awsCredentialsFile, log: this.options.log });
    await this.backups.start();
  }

  private async startGrpc(): Promise<void> {
    const c = this.config;
    const auth = await TokenAuth.fromFiles(c.tokenPaths);
    const { creds, tls } = runnerGrpcCredentials(c, this.options.log);
    const ownership = new JobOwnership();
    const service = new BuilderService({
      scheduler: this.runtime!.scheduler,
      ownership,
      store: hostStore,
      hydraDataDir: c.hydraDataDir,
      log: this.options.log,
      graceMs: c.builderGraceInS * 1000,
      pingTimeoutMs: c.builderPingTimeoutInS * 1000,
      presigned: presignedUploads(c.usePresignedUploads, this.caches, this.options.log),
    });
    this.builderService = service;
    const rejections = new RejectionLog((r) => this.options.log.warn(r, 'builder authentication rejected'));
    this.grpc = createRunnerServer({
      auth,
      ownership,
      handlers: service,
      pingTimeoutMs: c.builderPingTimeoutInS * 1000,
      // A few pings fit in the timeout, so one lost ping never drops a builder.
      pingIntervalMs: Math.min(10_000, Math.max(100, Math.floor((c.builderPingTimeoutInS * 1000) / 3))),
      onError: (err, method) => this.options.log.error({ method, err: String((err as Error)?.message ?? err) }, 'builder call failed'),
      requireClientCertificate: tls === 'mutual',
      onRejected: (peer, reason, method) => rejections.record(peer, reason, method),
    });
    const port = await listen(this.grpc, c.grpcListen, creds);
    this.grpcPort = port;
    this.options.log.info({ listen: c.grpcListen, tls, port }, 'builder protocol listening');
  }

  private async startHttp(store: SchedulerStore): Promise<void> {
    const c = this.config;
    if (c.httpListen === '') {
      this.options.log.info('HTTP API off (httpListen = "")');
      return;
    }
    const auth = c.apiTokenPaths.length > 0 ? await TokenAuth.fromFiles(c.apiTokenPaths, 'API') : null;
    const router = new Router(writeGuard(auth))
      .put('/build', putBuild(this.database.pool, store))
      .get('/metrics', metricsHandler(this.metrics!.registry))
      .get('/status/backups', backupsHandler(() => this.backups));
    await registerViewerRoutes(router, { lifecycle: this.lifecycle, scheduler: () => this.runtime?.scheduler ?? null, startedAt: this.startedAt, db: this.database.pool, hydraDataDir: c.hydraDataDir, caches: this.caches });
    this.http = await startHttpApi(router, c.httpListen, this.options.log);
    this.options.log.info({ listen: c.httpListen, port: this.http.port, writes: auth !== null }, 'HTTP API listening');
  }

  private addLocalBuilder(): void {
    const c = this.config;
    const systems = c.localBuilderSystems ?? [hostSystem()];
    this.runtime!.scheduler.addMachine(
      {
        id: 'localhost', systems: new Set(systems), features: new Set(c.localBuilderFeatures), mandatoryFeatures: new Set(),
        maxJobs: c.localBuilderJobs, speedFactor: 1, cpuCount: 1, bogomips: 1, state: 'joining', jobs: new Set(),
        consecutiveFailures: 0, lastFailure: 0, disabledUntil: 0, idleSince: 0, roomSince: 0, load: { ...IDLE_LOAD }, thresholds: DEFAULT_THRESHOLDS,
      },
      new LocalNixBuilder({ hydraDataDir: c.hydraDataDir }),
    );
    this.options.log.info({ machine: 'localhost', systems, maxJobs: c.localBuilderJobs }, 'local builder added');
  }

  /** Re-reads the configuration; an invalid file keeps the old one. */
  reload(): void {
    const { log } = this.options;
    try {
      const next = loadRunnerConfig(this.options.configPath, this.options.overrides);
      const restart = this.runtime?.scheduler.reconfigure(next) ?? [];
      for (const k of ['dbUrl', 'stateDir', 'hydraDataDir', 'workerThreads', 'grpcListen', 'httpListen', 'localBuilderJobs', 'remoteStoreAddr', 's3Backup', 'awsCredentialsFile', 'rootsDir', 'tokenPaths', 'apiTokenPaths', 'dbGiveUpAfterInS', 'dbHeartbeatInS', 'maxPendingDbWrites', 'standby', 'grpcTls', 'grpcInsecure'] as const) {
        if (JSON.stringify(next[k]) !== JSON.stringify(this.config[k])) restart.push(k);
      }
      // The machines files are re-read too (a changed list of files needs a restart, as above).
      if (JSON.stringify(next.machinesFiles) !== JSON.stringify(this.config.machinesFiles)) restart.push('machinesFiles');
      this.config = next;
      this.runtime?.rereadMachines();
      log.info({ needRestart: restart }, 'configuration reloaded');
    } catch (err) {
      log.error({ err: (err as Error).message }, 'configuration reload failed; keeping the previous one');
    }
  }

  /** Hydra's `queue-runner/lock` in hydraDataDir, which Hydra's own runner takes too (src/daemon/queue-runner-lock-file.ts). */
  private async takeLockFile(): Promise<void> {
    this.lockFile = await QueueRunnerLockFile.acquire(this.config.hydraDataDir);
    this.options.log.info({ lockFile: this.lockFile.paths[0] }, 'holding the queue-runner lock file');
  }

  async stop(): Promise<void> {
    if (this.lifecycle.state === 'stopped' || this.lifecycle.state === 'draining') return this.lifecycle.when('stopped');
    const { log } = this.options;
    if (this.lifecycle.state !== 'starting') this.lifecycle.send('DRAIN');
    log.info({ state: this.lifecycle.state, graceSeconds: this.config.shutdownGraceInS }, 'runner draining');
    for (const [sig, fn] of this.signalHandlers) process.off(sig, fn);
    await this.runtime?.stop(this.config.shutdownGraceInS * 1000).catch((e: unknown) => log.error({ err: String(e) }, 'drain failed'));
    this.builderService?.close();
    await this.backups?.stop().catch((e: unknown) => log.error({ err: String(e) }, 'stopping the backups failed'));
    await this.http?.close();
    this.grpc?.forceShutdown();
    await this.listener?.stop();
    await this.lock?.release();
    await this.lockFile?.release();
    await this.pool?.close();
    await Promise.all(this.caches.map((cache) => cache.close()));
    await this.substituter?.close();
    this.substituter = null;
    await this.db?.close();
    this.lifecycle.send('STOPPED');
    log.info({ state: 'stopped' }, 'runner stopped');
  }

  private installSignals(): void {
    const stop = () => void this.stop();
    const hup = () => this.reload();
    this.signalHandlers = [['SIGTERM', stop], ['SIGINT', stop], ['SIGHUP', hup]];
    for (const [sig, fn] of this.signalHandlers) process.on(sig, fn);
  }
}
