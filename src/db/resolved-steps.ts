import type pg from 'pg';
import type { Queryable } from './chunks.ts';
import { sql } from './sql.ts';
import { BuildStatus } from './status.ts';
import { lockBuild, recordStep } from './step-rows.ts';

/**
 * Rows of content-addressed resolution: a step whose derivation was resolved
 * to another one is recorded as resolved (status 13, resolvedDrvPath), and
 * the realised outputs of built derivations are read back to resolve their
 * dependents (Hydra's Rust runner follows the same rows).
 */

export interface ResolvedStep {
  buildId: number;
  /** The original derivation. */
  drvPath: string;
  /** The resolved derivation (stored without the store directory). */
  resolvedDrvPath: string;
  system: string;
  machine: string;
  time: number;
  /** The resolved derivation's output paths where known (null for floating ones). */
  outputs: readonly { name: string; path: string | null }[];
}

/**
 * Records the status-13 row of a resolved step, unless the build already has
 * one for this derivation (a restart resolving the step again): the lookup
 * runs under the build's row lock, so there is never a second row. Returns
 * the stepnr and whether it was inserted now.
 */
export async function recordResolvedStep(client: pg.ClientBase, a: ResolvedStep): Promise<{ stepnr: number; inserted: boolean }> {
  await lockBuild(client, a.buildId);
  const { rows } = await client.query<{ stepnr: number }>(sql('resolve/find-resolved-step'), [a.buildId, a.drvPath]);
  if (rows[0]) return { stepnr: rows[0].stepnr, inserted: false };
  const stepnr = await recordStep(client, {
    buildId: a.buildId,
    drvPath: a.drvPath,
    status: BuildStatus.Resolved,
    startTime: a.time,
    stopTime: a.time,
    machine: a.machine,
    system: a.system,
    resolvedDrvPath: a.resolvedDrvPath,
    outputs: a.outputs,
  });
  return { stepnr, inserted: true };
}

/** The realised paths of the outputs of `drvPaths`, as recorded by their steps. */
export async function readRealisedOutputs(client: Queryable, drvPaths: readonly string[], storeDir: string): Promise<{ drvPath: string; name: string; path: string }[]> {
  if (drvPaths.length === 0) return [];
  const { rows } = await client.query<{ drvpath: string; name: string; path: string }>(sql('resolve/realised-outputs'), [drvPaths, storeDir]);
  return rows.map((r) => ({ drvPath: r.drvpath, name: r.name, path: r.path }));
}

/** The newest permanent failure of a resolved derivation's step (failed-before.sql), or null. */
export async function readFailedBefore(client: Queryable, drvPath: string): Promise<{ build: number; status: number } | null> {
  const { rows } = await client.query<{ build: number; status: number }>(sql('resolve/failed-before'), [drvPath]);
  return rows[0] ?? null;
}
