import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { startEmbeddedPostgres } from '../../src/db/embedded.ts';
import { createPool } from '../../src/db/pool.ts';
import { ensureSchema } from '../../src/db/schema.ts';

describe('embedded PostgreSQL', () => {
  const dir = mkdtempSync(join(tmpdir(), 'hydrant-embedded-'));
  afterAll(() => rmSync(dir, { recursive: true, force: true }));

  it('initialises a state directory, keeps data across restarts, and stops cleanly', async () => {
    const first = await startEmbeddedPostgres({ stateDir: dir });
    let pool = createPool(first.url, { max: 1 });
    expect(await ensureSchema(pool)).toEqual({ created: true, version: 87 });
    await pool.query("insert into failedpaths (path) values ('/nix/store/kept')");
    await pool.end();
    await first.stop();

    const second = await startEmbeddedPostgres({ stateDir: dir });
    pool = createPool(second.url, { max: 1 });
    expect(await ensureSchema(pool)).toEqual({ created: false, version: 87 });
    expect((await pool.query('select path from failedpaths')).rows).toEqual([{ path: '/nix/store/kept' }]);
    await pool.end();
    await second.stop();
    await expect(createPool(second.url, { max: 1 }).query('select 1')).rejects.toThrow();
  });
});
