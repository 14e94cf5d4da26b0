import type pg from 'pg';
import { BinaryCache } from '../cache/binary-cache.ts';
import { parseStoreUri, type StoreUri } from '../cache/store-uri.ts';
import { uploadClosure } from '../cache/upload.ts';
import {
  advanceBackupTarget,
  backupDone,
  backupFailed,
  backupSummary,
  buildOutputPaths,
  dueBackups,
  enqueueBackups,
  ensureBackupSchema,
  failingBackups,
  type FinishedBuild,
  finishedBuilds,
  nextDueBackup,
  pruneBackups,
  registerBackupTarget,
  unqueuedBuilds,
} from '../db/backup-queue.ts';
import { NotificationListener, type Notification } from '../db/listener.ts';
import { ConfigError } from '../errors/index.ts';
import type { Logger } from '../util/logger.ts';
import type { WorkerPool } from '../workers/pool.ts';

/** One `[[s3Backup]]` table of the runner's configuration. */
export interface BackupBucketConfig {
  readonly name?: string | undefined;
  readonly store?: string | undefined;
  readonly jobs: string;
  readonly compression?: 'bzip2' | 'xz' | 'zstd' | 'br' | 'none' | undefined;
  readonly prefix: string;
  readonly secretKey?: string | undefined;
  readonly retryInS: number;
}

/** A backup bucket resolved: its store, its key prefix and the jobs it takes. */
export interface BackupTarget {
  /** `<store URI without parameters>/<prefix>`: the queue's name for it. */
  readonly id: string;
  readonly store: StoreUri;
  readonly prefix: string;
  readonly jobs: RegExp;
  readonly retryInS: number;
}

/** The longest wait between two attempts of one backup. */
const MAX_RETRY_S = 3600;
/** Builds scanned again at each start: those that ended in the day before the last scan (a late commit's stopTime is older than its commit). */
const RESCAN_S = 24 * 3600;
/** Backups a target takes from the queue at a time. */
const BATCH = 20;

const unixNow = (): number => Math.floor(Date.now() / 1000);

/**
 * The store URI of a `[[s3Backup]]` table: `store`, or `s3://<name>`, with the
 * table's compression (bzip2 by default, as the plugin) and signing key (the
 * runner's, i.e. the first remoteStoreAddr's `secret-key`, unless set) added
 * as parameters. A URI that already says otherwise is refused.
 */
export function resolveBackupTarget(b: BackupBucketConfig, defaultSecretKeyFile: string | undefined): BackupTarget {
  const where = `s3Backup ${b.store ?? b.name}`;
  const uri = b.store ?? `s3://${b.name}`;
  const q = uri.indexOf('?');
  const base = q < 0 ? uri : uri.slice(0, q);
  const params = new URLSearchParams(q < 0 ? '' : uri.slice(q + 1));
  const extra = new URLSearchParams();
  const given = params.get('compression');
  if (given !== null && b.compression !== undefined && given !== b.compression) {
    throw new ConfigError(`${where}: compression = "${b.compression}" contradicts the URI's compression=${given}`);
  }
  if (given === null) extra.set('compression', b.compression ?? 'bzip2');
  if (params.has('secret-key') && b.secretKey !== undefined) throw new ConfigError(`${where}: set secretKey or the URI's secret-key=, not both`);
  if (!params.has('secret-key')) {
    const key = b.secretKey ?? defaultSecretKeyFile;
    if (key === undefined) throw new ConfigError(`${where}: no signing key: set secretKey, or a secret-key= on a remoteStoreAddr entry`);
    extra.set('secret-key', key);
  }
  const more = extra.toString();
  const full = more === '' ? uri : `${uri}${q < 0 ? '?' : '&'}${more}`;
  return Object.freeze({
    id: `${base.replace(/\/+$/, '')}/${b.prefix}`,
    store: parseStoreUri(full),
    prefix: b.prefix,
    jobs: new RegExp(`^(?:${b.jobs})$`),
    retryInS: b.retryInS,
  });
}

/** Every `[[s3Backup]]` table resolved; two tables naming one target (store and prefix) are refused. */
export function resolveBackupTargets(tables: readonly BackupBucketConfig[], defaultSecretKeyFile: string | undefined): BackupTarget[] {
  const targets = tables.map((b) => resolveBackupTarget(b, defaultSecretKeyFile));
  const seen = new Set<string>();
  for (const t of targets) {
    if (seen.has(t.id)) throw new ConfigError(`s3Backup: ${t.id} is configured twice; give each bucket one table (one regex may name several jobs)`);
    seen.add(t.id);
  }
  return targets;
}

/** Totals of one target since start (metrics and the status API). */
export interface BackupTotals {
  /** Builds whose closure this run copied. */
  builds: number;
  /** Store paths uploaded, their compressed bytes. */
  paths: number;
  bytes: number;
  /** Failed attempts (each retried later). */
  failures: number;
  /** Backups waiting in the queue, as last counted. */
  pending: number;
}

export interface BackupUploaderOptions {
  db: pg.Pool;
  /** For the LISTEN connection on build_finished. */
  dbUrl: string;
  pool: WorkerPool;
  targets: readonly BackupTarget[];
  awsCredentialsFile?: string | undefined;
  log: Logger;
}

/**
 * Copies the closure of every build that ends with status 0 or 6 to each
 * backup target whose jobs regex matches `project:jobset:job`, as Hydra's
 * S3Backup plugin did on hydra-notify's buildFinished, signed.
 *
 * Durable: a build is queued in the database (hydrant.backup_queue) when
 * `build_finished` announces it and, whatever was missed (a crash between a
 * build's commit and its queueing, a lost notification), by the scan of
 * builds ended without a queue row at start and after the LISTEN connection
 * comes back. A queued backup leaves the queue only when its closure is in
 * the target; a failed attempt is retried with exponential backoff, and a
 * backup never touches the build's rows.
 */
export class BackupUploader {
  private readonly workers: TargetWorker[];
  private listener: NotificationListener | null = null;
  private stopped = false;

  constructor(private readonly o: BackupUploaderOptions) {
    this.workers = o.targets.map((t) => new TargetWorker(t, o));
  }

  async start(): Promise<void> {
    const { db, log } = this.o;
    await ensureBackupSchema(db);
    for (const w of this.workers) await w.register();
    // Listening before the scan, so that no build falls between the two.
    const listener = (this.listener = new NotificationListener({ url: this.o.dbUrl, channels: ['build_finished'], maxBackoffMs: 5000 }));
    listener.on('notification', (n: Notification) => void this.finished(n));
    listener.on('reconnected', () => void this.scan());
    await listener.start();
    await this.scan();
    for (const w of this.workers) {
      log.info({ target: w.target.id, jobs: w.target.jobs.source, compression: w.target.store.compression, since: w.since }, 'backup bucket ready');
      w.kick();
    }
  }

  /** Queues the builds ended with status 0 or 6 that no target has seen yet. */
  private async scan(): Promise<void> {
    if (this.stopped) return;
    const started = unixNow();
    for (const w of this.workers) {
      try {
        const builds = await unqueuedBuilds(this.o.db, w.target.id, w.since);
        await w.enqueue(builds);
        const next = Math.max(w.since, started - RESCAN_S);
        await advanceBackupTarget(this.o.db, w.target.id, next);
        w.since = next;
        await pruneBackups(this.o.db, w.target.id, next);
      } catch (err) {
        this.o.log.error({ target: w.target.id, err: message(err) }, 'backup scan failed; it runs again at the next start or reconnect');
      }
    }
  }

  private async finished(n: Notification): Promise<void> {
    if (this.stopped || n.channel !== 'build_finished') return;
    const ids = n.payload.split('\t').map(Number).filter((x) => Number.isSafeInteger(x));
    try {
      const builds = await finishedBuilds(this.o.db, ids);
      for (const w of this.workers) await w.enqueue(builds);
    } catch (err) {
      // The scan after the next start or reconnect finds them.
      this.o.log.error({ builds: ids, err: message(err) }, 'could not queue finished builds for backup');
    }
  }

  /** Totals per target, for metrics. */
  totals(): { target: string; totals: Readonly<BackupTotals> }[] {
    return this.workers.map((w) => ({ target: w.target.id, totals: w.totals }));
  }

  /** The queue as the status API shows it: per target, and the backups that have failed. */
  async status(): Promise<unknown> {
    const ids = this.workers.map((w) => w.target.id);
    const [summary, failing] = await Promise.all([backupSummary(this.o.db, ids), failingBackups(this.o.db, ids, 100)]);
    const byId = new Map(summary.map((s) => [s.target, s]));
    return {
      targets: this.workers.map((w) => {
        const s = byId.get(w.target.id);
        return {
          target: w.target.id,
          jobs: w.target.jobs.source,
          compression: w.target.store.compression,
          since: w.since,
          done: s?.done ?? 0,
          pending: s?.pending ?? 0,
          failing: s?.failing ?? 0,
          oldestPending: s?.oldestPending ?? null,
          thisRun: { ...w.totals },
        };
      }),
      failing,
    };
  }

  async stop(): Promise<void> {
    this.stopped = true;
    await this.listener?.stop();
    await Promise.all(this.workers.map((w) => w.stop()));
  }
}

function message(err: unknown): string {
  return String((err as Error)?.message ?? err);
}

/** One target's queue: one backup at a time, its cache opened at the first one. */
class TargetWorker {
  since = 0;
  readonly totals: BackupTotals = { builds: 0, paths: 0, bytes: 0, failures: 0, pending: 0 };
  private cache: BinaryCache | null = null;
  private running: Promise<void> | null = null;
  private again = false;
  private timer: NodeJS.Timeout | null = null;
  private stopped = false;

  constructor(
    readonly target: BackupTarget,
    private readonly o: BackupUploaderOptions,
  ) {}

  async register(): Promise<void> {
    this.since = await registerBackupTarget(this.o.db, this.target.id, unixNow());
  }

  /** Queues those of `builds` whose job matches. */
  async enqueue(builds: readonly FinishedBuild[]): Promise<void> {
    const ids = builds.filter((b) => this.target.jobs.test(`${b.project}:${b.jobset}:${b.job}`)).map((b) => b.id);
    if (ids.length === 0) return;
    await enqueueBackups(this.o.db, this.target.id, ids, unixNow());
    this.o.log.info({ target: this.target.id, builds: ids }, 'builds queued for backup');
    this.kick();
  }

  /** Works through the due backups (again, if it is running now). */
  kick(): void {
    if (this.stopped) return;
    if (this.running) {
      this.again = true;
      return;
    }
    if (this.timer) clearTimeout(this.timer);
    this.timer = null;
    this.running = this.drain().finally(() => {
      this.running = null;
      if (this.again) {
        this.again = false;
        this.kick();
      }
    });
  }

  private async drain(): Promise<void> {
    const { db, log } = this.o;
    try {
      for (;;) {
        const due = await dueBackups(db, this.target.id, unixNow(), BATCH);
        if (due.length === 0 || this.stopped) break;
        for (const d of due) {
          if (this.stopped) return;
          await this.attempt(d.build, d.attempts);
        }
      }
      const summary = await backupSummary(db, [this.target.id]);
      this.totals.pending = summary[0]?.pending ?? 0;
      const next = await nextDueBackup(db, this.target.id);
      if (next !== null && !this.stopped) this.wakeAt(next);
    } catch (err) {
      // The database is away: try again shortly.
      log.warn({ target: this.target.id, err: message(err) }, 'backup queue unreadable; retrying');
      this.wakeAt(unixNow() + Math.min(this.target.retryInS, 30));
    }
  }

  private wakeAt(at: number): void {
    if (this.stopped) return;
    if (this.timer) clearTimeout(this.timer);
    this.timer = setTimeout(() => this.kick(), Math.max(0, at * 1000 - Date.now()) + 50);
    this.timer.unref();
  }

  private async openCache(): Promise<BinaryCache> {
    this.cache ??= await BinaryCache.open(this.target.store, this.o.pool, { awsCredentialsFile: this.o.awsCredentialsFile, keyPrefix: this.target.prefix });
    return this.cache;
  }

  /** One attempt of one build's backup; a failure is recorded with the time of the next. */
  private async attempt(build: number, attempts: number): Promise<void> {
    const { db, log } = this.o;
    const started = performance.now();
    try {
      const paths = await buildOutputPaths(db, build);
      const cache = await this.openCache();
      const r = await uploadClosure(cache, paths);
      await backupDone(db, this.target.id, build, unixNow());
      this.totals.builds++;
      this.totals.paths += r.uploaded.length;
      this.totals.bytes += r.uploaded.reduce((n, u) => n + u.fileSize, 0);
      log.info({ build, target: this.target.id, uploaded: r.uploaded.length, present: r.skipped.length, ms: Math.round(performance.now() - started) }, 'build backed up');
    } catch (err) {
      this.totals.failures++;
      const delay = Math.min(MAX_RETRY_S, this.target.retryInS * 2 ** attempts);
      log.warn({ build, target: this.target.id, attempt: attempts + 1, retryInS: delay, err: message(err) }, 'backup failed; will retry');
      await backupFailed(db, this.target.id, build, unixNow() + Math.ceil(delay), message(err).slice(0, 2000));
    }
  }

  async stop(): Promise<void> {
    this.stopped = true;
    if (this.timer) clearTimeout(this.timer);
    // An upload under way ends (or fails) first; what it did not finish stays queued.
    await this.running;
    await this.cache?.close();
  }
}
