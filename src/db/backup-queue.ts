import type pg from 'pg';
import { withTransaction } from './pool.ts';
import { sql } from './sql.ts';

/**
 * The durable queue of backups (docs/CACHES.md, "Backup buckets"): tables
 * of Hydrant's own in the `hydrant` schema (src/db/sql/backup/schema.sql),
 * never in Hydra's. A build is queued for a target when it is seen ending
 * (build_finished) or by the scan at start, and leaves the queue only once
 * its closure is in the target.
 */

/** A finished build as the jobs regex sees it. */
export interface FinishedBuild {
  id: number;
  project: string;
  jobset: string;
  job: string;
}

export interface DueBackup {
  build: number;
  attempts: number;
}

export interface BackupSummaryRow {
  target: string;
  done: number;
  pending: number;
  failing: number;
  oldestPending: number | null;
}

export interface FailingBackup {
  target: string;
  build: number;
  attempts: number;
  nextAttempt: number;
  lastError: string | null;
}

/** Creates the schema and tables when missing (only when backups are configured). */
export async function ensureBackupSchema(pool: pg.Pool): Promise<void> {
  await withTransaction(pool, async (c) => {
    // Two processes starting at once must not both create the schema.
    await c.query(sql('schema/lock'));
    await c.query(sql('backup/schema'));
  });
}

/** Registers `target` (at `now` if new); returns since when its builds are backed up. */
export async function registerBackupTarget(pool: pg.Pool, target: string, now: number): Promise<number> {
  const { rows } = await pool.query<{ since: number }>(sql('backup/register-target'), [target, now]);
  return rows[0]!.since;
}

/** Builds ended with status 0 or 6 from `since` on that have no queue row for `target`. */
export async function unqueuedBuilds(pool: pg.Pool, target: string, since: number): Promise<FinishedBuild[]> {
  return (await pool.query<FinishedBuild>(sql('backup/unqueued-builds'), [target, since])).rows;
}

/** Those of `ids` that ended with status 0 or 6. */
export async function finishedBuilds(pool: pg.Pool, ids: readonly number[]): Promise<FinishedBuild[]> {
  if (ids.length === 0) return [];
  return (await pool.query<FinishedBuild>(sql('backup/finished-builds'), [ids])).rows;
}

export async function enqueueBackups(pool: pg.Pool, target: string, builds: readonly number[], now: number): Promise<void> {
  if (builds.length > 0) await pool.query(sql('backup/enqueue'), [target, builds, now]);
}

export async function dueBackups(pool: pg.Pool, target: string, now: number, limit: number): Promise<DueBackup[]> {
  return (await pool.query<DueBackup>(sql('backup/due'), [target, now, limit])).rows;
}

/** When the target's next pending backup is due, or null when none is pending. */
export async function nextDueBackup(pool: pg.Pool, target: string): Promise<number | null> {
  const { rows } = await pool.query<{ at: number | null }>(sql('backup/next-due'), [target]);
  return rows[0]?.at ?? null;
}

export async function backupDone(pool: pg.Pool, target: string, build: number, now: number): Promise<void> {
  await pool.query(sql('backup/done'), [target, build, now]);
}

export async function backupFailed(pool: pg.Pool, target: string, build: number, nextAttempt: number, error: string): Promise<void> {
  await pool.query(sql('backup/failed'), [target, build, nextAttempt, error]);
}

/** The output paths of a build. */
export async function buildOutputPaths(pool: pg.Pool, build: number): Promise<string[]> {
  return (await pool.query<{ path: string }>(sql('backup/build-outputs'), [build])).rows.map((r) => r.path);
}

export async function backupSummary(pool: pg.Pool, targets: readonly string[]): Promise<BackupSummaryRow[]> {
  return (await pool.query<BackupSummaryRow>(sql('backup/summary'), [targets])).rows;
}

export async function failingBackups(pool: pg.Pool, targets: readonly string[], limit: number): Promise<FailingBackup[]> {
  return (await pool.query<FailingBackup>(sql('backup/failing'), [targets, limit])).rows;
}

/** Later scans of `target` start at `since` (never earlier than before). */
export async function advanceBackupTarget(pool: pg.Pool, target: string, since: number): Promise<void> {
  await pool.query(sql('backup/advance-target'), [target, since]);
}

/** Forgets done backups of builds that ended before `since` (no scan reads them again); returns how many. */
export async function pruneBackups(pool: pg.Pool, target: string, since: number): Promise<number> {
  return (await pool.query(sql('backup/prune'), [target, since])).rowCount ?? 0;
}
