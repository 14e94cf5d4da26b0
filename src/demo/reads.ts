import type pg from 'pg';
import { sql } from '../db/sql.ts';

/** One build of the demo as the progress display and the summary see it. */
export interface DemoBuild {
  id: number;
  job: string;
  drvPath: string;
  finished: boolean;
  status: number | null;
  cached: boolean;
  releaseName: string | null;
  /** The builder that ran the step of the build's own derivation, if one did. */
  machine: string | null;
}

export interface MachineSteps {
  machine: string;
  succeeded: number;
  failed: number;
  aborted: number;
}

export interface BuildProducts {
  out: string | null;
  products: { type: string; subtype: string; path: string }[];
}

interface BuildRow {
  id: number;
  job: string;
  drvpath: string;
  finished: number;
  buildstatus: number | null;
  iscachedbuild: number | null;
  releasename: string | null;
  machine: string | null;
}

export async function readBuilds(pool: pg.Pool, ids: readonly number[]): Promise<DemoBuild[]> {
  const { rows } = await pool.query<BuildRow>(sql('demo/builds'), [ids]);
  return rows.map((r) => ({
    id: r.id,
    job: r.job,
    drvPath: r.drvpath,
    finished: r.finished === 1,
    status: r.finished === 1 ? r.buildstatus : null,
    cached: r.iscachedbuild === 1,
    releaseName: r.releasename,
    machine: r.machine,
  }));
}

export async function busySteps(pool: pg.Pool, ids: readonly number[]): Promise<number> {
  return (await pool.query<{ n: number }>(sql('demo/busy-steps'), [ids])).rows[0]?.n ?? 0;
}

export async function stepsPerMachine(pool: pg.Pool, ids: readonly number[]): Promise<MachineSteps[]> {
  return (await pool.query<MachineSteps>(sql('demo/steps-per-machine'), [ids])).rows;
}

export async function buildProducts(pool: pg.Pool, id: number): Promise<BuildProducts> {
  const { rows } = await pool.query<{ type: string | null; subtype: string; path: string; out: string | null }>(sql('demo/build-products'), [id]);
  return {
    out: rows[0]?.out ?? null,
    products: rows.filter((r) => r.type !== null).map((r) => ({ type: r.type!, subtype: r.subtype, path: r.path })),
  };
}
