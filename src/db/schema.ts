import { readdirSync, readFileSync } from 'node:fs';
import type pg from 'pg';
import { SchemaMismatchError } from '../errors/index.ts';
import { withTransaction } from './pool.ts';
import { REQUIRED_SCHEMA } from './required-schema.ts';
import { sql } from './sql.ts';

type Queryable = Pick<pg.Pool | pg.PoolClient, 'query'>;

export interface SchemaStatus {
  /** True when this call created Hydra's schema on an empty database. */
  created: boolean;
  version: number;
}

/** Lists `table.column` entries Hydrant needs that the database lacks. */
export async function findMissing(db: Queryable): Promise<string[]> {
  const { rows } = await db.query<{ table_name: string; column_name: string }>(sql('schema/columns'));
  const present = new Map<string, Set<string>>();
  for (const r of rows) {
    let cols = present.get(r.table_name);
    if (!cols) present.set(r.table_name, (cols = new Set()));
    cols.add(r.column_name);
  }
  const missing: string[] = [];
  for (const [table, columns] of Object.entries(REQUIRED_SCHEMA)) {
    const cols = present.get(table);
    if (!cols) {
      missing.push(`table ${table}`);
      continue;
    }
    for (const c of columns) if (!cols.has(c)) missing.push(`column ${table}.${c}`);
  }
  return missing;
}

/** Verifies an existing schema without changing it; throws SchemaMismatchError. */
export async function checkSchema(db: Queryable): Promise<number> {
  const missing = await findMissing(db);
  if (missing.length > 0) throw new SchemaMismatchError(missing);
  const { rows } = await db.query<{ version: number }>(sql('schema/version'));
  return rows[0]?.version ?? 0;
}

function migrationFiles(): { name: string; text: string }[] {
  const dir = new URL('./migrations/', import.meta.url);
  return readdirSync(dir)
    .filter((f) => /^\d+_.*\.sql$/.test(f))
    .sort()
    .map((name) => ({ name, text: readFileSync(new URL(name, dir), 'utf8') }));
}

/**
 * Creates Hydra's schema when the database is empty; otherwise only checks
 * it. An existing Hydra schema is never altered: Hydra's own `hydra-init`
 * owns its migrations.
 */
export async function ensureSchema(pool: pg.Pool): Promise<SchemaStatus> {
  const created = await withTransaction(pool, async (client) => {
    await client.query(sql('schema/lock'));
    const { rows } = await client.query<{ has_version: boolean; has_builds: boolean }>(sql('schema/has-schema-version'));
    const state = rows[0]!;
    if (state.has_version) return false;
    if (state.has_builds) throw new SchemaMismatchError(['table schemaversion (Builds exists without it: not a complete Hydra schema)']);
    for (const m of migrationFiles()) await client.query(m.text);
    return true;
  });
  const version = await checkSchema(pool);
  return { created, version };
}
