import type { QueryResultRow } from 'pg';
import type { Queryable } from './chunks.ts';
import { sql } from './sql.ts';
import { BuildStatus } from './status.ts';
import type { StepColumns } from './step-rows.ts';

/** Status code → name (`failed`, `timedOut`, …) for readers of the status API. */
const STATUS_NAMES = new Map<number, string>(Object.entries(BuildStatus).map(([k, v]) => [v, k[0]!.toLowerCase() + k.slice(1)]));
export const statusName = (code: number | null): string | null => (code === null ? null : (STATUS_NAMES.get(code) ?? String(code)));

export interface OutputRow {
  name: string;
  path: string | null;
}

export interface BuildHistoryRow {
  id: number;
  finished: boolean;
  buildStatus: number | null;
  buildStatusName: string | null;
  project: string;
  jobset: string;
  job: string;
  drvPath: string;
  system: string;
  nixName: string | null;
  timestamp: number;
  startTime: number | null;
  stopTime: number | null;
  isCachedBuild: boolean;
  size: number | null;
  closureSize: number | null;
  outputs: OutputRow[];
}

export interface StepHistoryRow extends StepColumns {
  stepnr: number;
  statusName: string | null;
  /** Status 13: the derivation this step was resolved to (a full store path). */
  resolvedDrvPath: string | null;
  outputs: OutputRow[];
}

const num = (v: unknown): number | null => (v === null || v === undefined ? null : Number(v));

/** A build's row as the status API shows a build that is not queued (finished, or held by another runner). Null: no such build. */
export async function readBuild(db: Queryable, id: number): Promise<BuildHistoryRow | null> {
  const { rows } = await db.query(sql('history/build'), [id]);
  const r = rows[0];
  if (!r) return null;
  return {
    id: r.id,
    finished: r.finished === 1,
    buildStatus: r.buildstatus,
    buildStatusName: r.finished === 1 ? statusName(r.buildstatus) : null,
    project: r.project,
    jobset: r.jobset,
    job: r.job,
    drvPath: r.drvpath,
    system: r.system,
    nixName: r.nixname,
    timestamp: r.timestamp,
    startTime: r.starttime,
    stopTime: r.stoptime,
    isCachedBuild: r.iscachedbuild === 1,
    size: num(r.size),
    closureSize: num(r.closuresize),
    outputs: r.outputs,
  };
}

/** A build's step rows (every attempt) in stepnr order, at most `limit`. */
export async function readBuildSteps(db: Queryable, buildId: number, limit: number, storeDir: string): Promise<StepHistoryRow[]> {
  const { rows } = await db.query(sql('history/build-steps'), [buildId, limit]);
  return rows.map((r) => ({
    stepnr: r.stepnr,
    type: r.type,
    drvPath: r.drvpath,
    busy: r.busy,
    status: r.status,
    statusName: statusName(r.status),
    errorMsg: r.errormsg,
    startTime: r.starttime,
    stopTime: r.stoptime,
    machine: r.machine,
    system: r.system,
    propagatedFrom: r.propagatedfrom,
    overhead: r.overhead,
    timesBuilt: r.timesbuilt,
    // Stored without the store directory (Hydra's Rust runner does the same).
    resolvedDrvPath: r.resolveddrvpath === null ? null : r.resolveddrvpath.startsWith('/') ? r.resolveddrvpath : `${storeDir}/${r.resolveddrvpath}`,
    outputs: r.outputs,
  }));
}

/** One step row's derivation (what its log file is named by); null when the build has no such step. */
export async function readStepDrv(db: Queryable, buildId: number, stepnr: number): Promise<{ drvPath: string; busy: number; status: number | null } | null> {
  const { rows } = await db.query(sql('history/build-step'), [buildId, stepnr]);
  const r = rows[0];
  return r ? { drvPath: r.drvpath, busy: r.busy, status: r.status } : null;
}

export interface RecentBuildsFilter {
  project?: string | undefined;
  jobset?: string | undefined;
  /** Part of the job's name. */
  job?: string | undefined;
  /** 0: queued (not finished), 1: finished. */
  finished?: 0 | 1 | undefined;
  /** Finished with this Builds.buildStatus. */
  buildStatus?: number | undefined;
  /** Finished with any status but success. */
  failedOnly?: boolean | undefined;
}

export interface RecentBuildRow {
  id: number;
  finished: boolean;
  buildStatus: number | null;
  statusName: string | null;
  project: string;
  jobset: string;
  job: string;
  nixName: string | null;
  system: string;
  drvPath: string;
  timestamp: number;
  startTime: number | null;
  stopTime: number | null;
  isCachedBuild: boolean;
}

/** Builds newest first, filtered, one page (`limit` rows from `offset`). */
export async function readRecentBuilds(db: Queryable, f: RecentBuildsFilter, limit: number, offset: number): Promise<RecentBuildRow[]> {
  const { rows } = await db.query(sql('history/recent-builds'), pageParams(f, limit, offset));
  return rows.map(recentBuildOf);
}

/** The filter's and the page's parameters, in the order recent-builds.sql and search-builds.sql (after its terms) take them. */
export function pageParams(f: RecentBuildsFilter, limit: number, offset: number): unknown[] {
  return [f.project ?? null, f.jobset ?? null, f.job ?? null, f.finished ?? null, f.buildStatus ?? null, f.failedOnly ?? null, limit, offset];
}

/** A recent-builds row (recent-builds.sql, search-builds.sql) as the status API shows it. */
export function recentBuildOf(r: QueryResultRow): RecentBuildRow {
  return {
    id: r.id,
    finished: r.finished === 1,
    buildStatus: r.finished === 1 ? r.buildstatus : null,
    statusName: r.finished === 1 ? statusName(r.buildstatus) : null,
    project: r.project,
    jobset: r.jobset,
    job: r.job,
    nixName: r.nixname,
    system: r.system,
    drvPath: r.drvpath,
    timestamp: r.timestamp,
    startTime: r.starttime,
    stopTime: r.stoptime,
    isCachedBuild: r.iscachedbuild === 1,
  };
}
