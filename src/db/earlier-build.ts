import type pg from 'pg';
import type { BuildMetric, BuildProduct } from './build-results.ts';
import { prepared } from './sql.ts';
import { BuildStatus } from './status.ts';

/** What a build whose outputs already exist takes over from the build that made them. */
export interface EarlierBuild {
  readonly id: number;
  /** 0, or 6 when the earlier build failed with output. */
  readonly status: number;
  readonly size: number | null;
  readonly closureSize: number | null;
  readonly releaseName: string | null;
  readonly products: readonly BuildProduct[];
  readonly metrics: readonly BuildMetric[];
}

/**
 * The finished successful build that produced one of `outputPaths`, with its
 * products and metrics, or null when none did. Hydra copies these onto a
 * build queued with outputs already valid (Rust runner state/mod.rs
 * get_build_output_cached; C++ queue-monitor.cc:643-700 getBuildOutputCached).
 */
export async function findEarlierBuild(client: pg.ClientBase, outputPaths: readonly string[]): Promise<EarlierBuild | null> {
  if (outputPaths.length === 0) return null;
  const { rows } = await client.query<{ id: number; buildstatus: number; releasename: string | null; closuresize: string | null; size: string | null }>(
    prepared('results/earlier-build'),
    [outputPaths],
  );
  const b = rows[0];
  if (!b) return null;
  const products = await client.query<{ type: string; subtype: string; filesize: string | null; sha256hash: string | null; path: string; name: string; defaultpath: string | null }>(
    prepared('results/earlier-build-products'),
    [b.id],
  );
  const metrics = await client.query<{ name: string; unit: string | null; value: number }>(prepared('results/earlier-build-metrics'), [b.id]);
  return {
    id: b.id,
    status: b.buildstatus === BuildStatus.FailedWithOutput ? BuildStatus.FailedWithOutput : BuildStatus.Success,
    size: b.size === null ? null : Number(b.size),
    closureSize: b.closuresize === null ? null : Number(b.closuresize),
    releaseName: b.releasename,
    products: products.rows.map((p) => ({
      type: p.type,
      subtype: p.subtype,
      fileSize: p.filesize === null ? null : Number(p.filesize),
      sha256hash: p.sha256hash,
      path: p.path,
      name: p.name,
      defaultPath: p.defaultpath,
    })),
    metrics: metrics.rows.map((m) => ({ name: m.name, unit: m.unit, value: Number(m.value) })),
  };
}

/** Whether findEarlierBuild would find a build, asked outside any transaction (one statement). */
export async function hasEarlierBuild(db: Pick<pg.Pool, 'query'>, outputPaths: readonly string[]): Promise<boolean> {
  if (outputPaths.length === 0) return false;
  const { rows } = await db.query(prepared('results/earlier-build'), [outputPaths]);
  return rows.length > 0;
}
