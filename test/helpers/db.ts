import { randomBytes } from 'node:crypto';
import pg from 'pg';
import { afterAll, beforeAll, inject } from 'vitest';
import { createPool } from '../../src/db/pool.ts';
import { withDatabase } from '../../src/db/url.ts';
import { TEMPLATE_DB } from './db-names.ts';

export interface TestDatabase {
  name: string;
  url: string;
  pool: pg.Pool;
  drop(): Promise<void>;
}

function urlFor(name: string): string {
  return withDatabase(inject('pgAdminUrl'), name);
}

async function admin<T>(fn: (c: pg.Client) => Promise<T>): Promise<T> {
  const c = new pg.Client({ connectionString: inject('pgAdminUrl') });
  await c.connect();
  try {
    return await fn(c);
  } finally {
    await c.end();
  }
}

/**
 * A fresh database of its own for a test file: a clone of the template that
 * already has Hydra's schema (`withSchema`), or an empty one.
 */
export async function createTestDatabase(opts: { withSchema?: boolean } = {}): Promise<TestDatabase> {
  const name = `t_${randomBytes(6).toString('hex')}`;
  const template = opts.withSchema === false ? 'template0' : TEMPLATE_DB;
  await admin((c) => c.query(`create database ${name} template ${template}`));
  const url = urlFor(name);
  const pool = createPool(url, { max: 8 });
  return {
    name,
    url,
    pool,
    async drop() {
      await pool.end();
      await admin((c) => c.query(`drop database if exists ${name} with (force)`));
    },
  };
}

/**
 * A fresh test database (as createTestDatabase) for the tests of the
 * enclosing describe block, or of the file at top level: created before
 * them, dropped after them. Call it before registering the block's own
 * hooks, so that its beforeAll runs before theirs and its afterAll after
 * theirs. The fields are read when used, in hooks and tests.
 */
export function useTestDatabase(opts: { withSchema?: boolean } = {}): TestDatabase {
  let db: TestDatabase | undefined;
  beforeAll(async () => {
    db = await createTestDatabase(opts);
  });
  afterAll(async () => {
    await db?.drop();
  });
  const current = (): TestDatabase => {
    if (db === undefined) throw new Error('the test database is only there in the hooks and tests of its describe block');
    return db;
  };
  return {
    get name() {
      return current().name;
    },
    get url() {
      return current().url;
    },
    get pool() {
      return current().pool;
    },
    async drop() {
      const d = current();
      db = undefined;
      await d.drop();
    },
  };
}
