import type pg from 'pg';
import { sql } from './sql.ts';

type Queryable = Pick<pg.Pool | pg.PoolClient | pg.Client, 'query'>;

const KINDS = ['columns', 'constraints', 'indexes', 'triggers', 'functions', 'rules'] as const;

/**
 * A normalized, sorted description of a schema's tables, columns, constraints,
 * indexes, triggers, trigger functions and rules: one line per object. Two
 * schemas are the same for Hydra's purposes when their catalogs are equal.
 */
export async function describeCatalog(db: Queryable): Promise<string[]> {
  const lines: string[] = [];
  for (const kind of KINDS) {
    const { rows } = await db.query<{ object: string; definition: string }>(sql(`schema/catalog-${kind}`));
    for (const r of rows) lines.push(`${kind} ${r.object.toLowerCase()}: ${r.definition}`);
  }
  return lines.sort();
}

/** Lines only in `a` (prefixed '-') and only in `b` (prefixed '+'). */
export function diffCatalogs(a: readonly string[], b: readonly string[]): string[] {
  const inA = new Set(a);
  const inB = new Set(b);
  return [...a.filter((l) => !inB.has(l)).map((l) => `- ${l}`), ...b.filter((l) => !inA.has(l)).map((l) => `+ ${l}`)];
}
