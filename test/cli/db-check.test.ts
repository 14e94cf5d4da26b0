import { describe, expect, it } from 'vitest';
import { useTestDatabase } from '../helpers/db.ts';
import { runCli } from '../helpers/cli.ts';
import { redactUrl } from '../../src/config/runner-config.ts';

describe('hydrant db check', () => {
  const db = useTestDatabase();

  it('accepts a Hydra schema and then fails with one clear line when a column is missing', async () => {
    const ok = await runCli(['db', 'check', '--db-url', db.url]);
    expect(ok.stdout).toBe(`database: ${redactUrl(db.url)}\nschema ok (SchemaVersion 87)\n`);
    expect(ok.code).toBe(0);
    await db.pool.query('alter table buildsteps drop column propagatedfrom');
    const bad = await runCli(['db', 'check', '--db-url', db.url]);
    expect(bad.code).toBe(1);
    expect(bad.stderr).toBe(
      'hydrant: SCHEMA_MISMATCH: database schema is missing what Hydrant needs: column buildsteps.propagatedfrom\n',
    );
  });

  it('never prints the database password', async () => {
    // A wrong password (the harness's credentials are random per run).
    const wrong = new URL(db.url);
    wrong.password = `${wrong.password}-x`;
    const r = await runCli(['db', 'check', '--db-url', wrong.toString()]);
    expect(r.code).toBe(1);
    expect(r.stderr.split('\n').filter(Boolean)).toHaveLength(1);
    expect(r.stderr).toMatch(/DB_UNAVAILABLE/);
    expect(r.stderr).not.toContain(wrong.password);
  });
});

describe('hydrant --help', () => {
  it('lists the commands and explains each', async () => {
    const r = await runCli(['--help']);
    expect(r.code).toBe(0);
    expect(r.stdout).toMatch(/serve\s+run the queue runner daemon/);
    const db = await runCli(['help', 'db']);
    expect(db.stdout).toMatch(/compare --hydra-sql FILE/);
    const bad = await runCli(['nope']);
    expect(bad.code).toBe(2);
  });
});
