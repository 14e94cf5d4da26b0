import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import pg from 'pg';
import type { TestProject } from 'vitest/node';
import { startEmbeddedPostgres, type EmbeddedDatabase } from '../../src/db/embedded.ts';
import { createPool } from '../../src/db/pool.ts';
import { withDatabase } from '../../src/db/url.ts';
import { ensureSchema } from '../../src/db/schema.ts';
import { TEMPLATE_DB } from './db-names.ts';

declare module 'vitest' {
  export interface ProvidedContext {
    /** URL of the server's maintenance database; test files create their own databases. */
    pgAdminUrl: string;
  }
}

/**
 * One real PostgreSQL for the whole run: the embedded server unless
 * HYDRANT_TEST_DATABASE_URL names another (a maintenance database on a
 * server where the user may create databases). Hydra's schema is created once
 * in a template database that each test file clones in milliseconds.
 */
export default async function setup(project: TestProject): Promise<() => Promise<void>> {
  let server: EmbeddedDatabase | null = null;
  let dir: string | null = null;
  let adminUrl = process.env.HYDRANT_TEST_DATABASE_URL;
  if (!adminUrl) {
    dir = mkdtempSync(join(tmpdir(), 'hydrant-test-pg-'));
    server = await startEmbeddedPostgres({ stateDir: dir, ephemeral: true, maxConnections: 400 });
    adminUrl = withDatabase(server.url, 'postgres');
    // The tests' role drops its databases `with (force)`, which must also end
    // an autovacuum worker that happens to be in one: a process of no role,
    // which only a member of pg_signal_backend may terminate.
    const su = new pg.Client({ connectionString: server.adminUrl });
    await su.connect();
    await su.query(`grant pg_signal_backend to ${pg.escapeIdentifier(decodeURIComponent(new URL(server.url).username))}`);
    await su.end();
  }
  const admin = new pg.Client({ connectionString: adminUrl });
  await admin.connect();
  await admin.query(`drop database if exists ${TEMPLATE_DB}`);
  await admin.query(`create database ${TEMPLATE_DB}`);
  await admin.end();
  const pool = createPool(withDatabase(adminUrl, TEMPLATE_DB), { max: 2 });
  await ensureSchema(pool);
  await pool.end();
  project.provide('pgAdminUrl', adminUrl);
  return async () => {
    if (server) await server.stop();
    if (dir) rmSync(dir, { recursive: true, force: true });
  };
}
