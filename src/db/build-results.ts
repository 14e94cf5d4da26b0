import type pg from 'pg';
import type { BuildProductRow, NixSupportInfo } from './result-rows.ts';
import { prepared } from './sql.ts';
import { BuildStatus } from './status.ts';

/**
 * Successful ends of builds. A build ends exactly once: the UPDATE only
 * matches `finished = 0`, and when it matched nothing (already finished by
 * another path, cancelled in the web UI, ...) nothing else is written.
 */

export interface BuildOutputPath {
  readonly name: string;
  readonly path: string;
}

/** A BuildProducts row (sha256hash: hex SHA-256 of a file product). */
export type BuildProduct = BuildProductRow;

export type BuildMetric = NixSupportInfo['metrics'][number];

export interface FinishBuildSucceeded {
  buildId: number;
  /** 0 succeeded, or 6 failed with output (`nix-support/failed`). */
  status: number;
  startTime: number;
  stopTime: number;
  size: number | null;
  closureSize: number | null;
  releaseName: string | null;
  isCachedBuild: boolean;
  outputs: readonly BuildOutputPath[];
  products: readonly BuildProduct[];
  metrics: readonly BuildMetric[];
}

export interface FinishBuildCached {
  buildId: number;
  now: number;
  outputs: readonly { readonly name: string; readonly path: string | null }[];
  /** 0 (default), or 6 when the earlier build of the same outputs failed with output. */
  status?: number;
  /** Known from an earlier build of the same outputs; left as they are when omitted. */
  size?: number | null;
  closureSize?: number | null;
  releaseName?: string | null;
  /** Replace the build's products/metrics when given. */
  products?: readonly BuildProduct[];
  metrics?: readonly BuildMetric[];
}

async function setOutputPaths(
  client: pg.ClientBase,
  buildId: number,
  outputs: readonly { readonly name: string; readonly path: string | null }[],
): Promise<void> {
  const known = outputs.filter((o): o is BuildOutputPath => o.path !== null);
  if (known.length === 0) return;
  await client.query(prepared('results/set-build-output-paths'), [buildId, known.map((o) => o.name), known.map((o) => o.path)]);
}

/** Replaces the build's BuildProducts with `products`, numbered 1..n. */
export async function replaceBuildProducts(client: pg.ClientBase, buildId: number, products: readonly BuildProduct[]): Promise<void> {
  await client.query(prepared('results/delete-build-products'), [buildId]);
  await insertBuildProducts(client, buildId, products);
}

/**
 * Runs `statement` on the build's id and, per column, one array of the rows'
 * values (the statement unnests them); nothing when there are no rows.
 */
async function insertBuildRows<T>(
  client: pg.ClientBase,
  statement: string,
  buildId: number,
  rows: readonly T[],
  columns: readonly ((row: T) => unknown)[],
): Promise<void> {
  if (rows.length === 0) return;
  await client.query(prepared(statement), [buildId, ...columns.map((column) => rows.map(column))]);
}

/** Adds `products` (numbered 1..n) to a build that has none. */
function insertBuildProducts(client: pg.ClientBase, buildId: number, products: readonly BuildProduct[]): Promise<void> {
  return insertBuildRows(client, 'results/insert-build-products', buildId, products, [
    (p) => p.type,
    (p) => p.subtype,
    (p) => p.fileSize,
    (p) => p.sha256hash,
    (p) => p.path,
    (p) => p.name,
    (p) => p.defaultPath,
  ]);
}

/** Replaces the build's BuildMetrics; project, jobset, job and timestamp come from the build. */
export async function replaceBuildMetrics(client: pg.ClientBase, buildId: number, metrics: readonly BuildMetric[]): Promise<void> {
  await client.query(prepared('results/delete-build-metrics'), [buildId]);
  await insertBuildMetrics(client, buildId, metrics);
}

/** Adds `metrics` to a build that has none. */
function insertBuildMetrics(client: pg.ClientBase, buildId: number, metrics: readonly BuildMetric[]): Promise<void> {
  return insertBuildRows(client, 'results/insert-build-metrics', buildId, metrics, [(m) => m.name, (m) => m.unit, (m) => m.value]);
}

/**
 * The build's own derivation built (status 0, or 6 when it failed with
 * output): ends the build, fills its output paths, replaces its products and
 * metrics. Returns false, having written nothing, when it was already
 * finished.
 */
export async function finishBuildSucceeded(client: pg.ClientBase, a: FinishBuildSucceeded): Promise<boolean> {
  if (a.status !== BuildStatus.Success && a.status !== BuildStatus.FailedWithOutput) {
    throw new RangeError(`a succeeded build has status 0 or 6, not ${a.status}`);
  }
  // Ends the build, fills its outputs and clears old products and metrics, in one statement.
  const res = await client.query(prepared('results/finish-build-succeeded'), [
    a.buildId,
    a.status,
    a.startTime,
    a.stopTime,
    a.size,
    a.closureSize,
    a.releaseName,
    a.isCachedBuild ? 1 : 0,
    a.outputs.map((o) => o.name),
    a.outputs.map((o) => o.path),
  ]);
  if (res.rowCount !== 1) return false;
  await insertBuildProducts(client, a.buildId, a.products);
  await insertBuildMetrics(client, a.buildId, a.metrics);
  return true;
}

/**
 * All of the build's outputs already exist: it succeeds at `now` as a cached
 * build. Returns false, having written nothing, when it was already finished.
 */
export async function finishBuildCached(client: pg.ClientBase, a: FinishBuildCached): Promise<boolean> {
  const res = await client.query(prepared('results/finish-build-cached'), [
    a.buildId,
    a.now,
    a.size ?? null,
    a.closureSize ?? null,
    a.releaseName ?? null,
    a.status ?? BuildStatus.Success,
  ]);
  if (res.rowCount !== 1) return false;
  await setOutputPaths(client, a.buildId, a.outputs);
  if (a.products) await replaceBuildProducts(client, a.buildId, a.products);
  if (a.metrics) await replaceBuildMetrics(client, a.buildId, a.metrics);
  return true;
}
