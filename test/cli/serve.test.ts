import { writeFileSync, mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { useTestDatabase } from '../helpers/db.ts';
import { startCli } from '../helpers/cli.ts';

describe('hydrant serve lifecycle', () => {
  const db = useTestDatabase({ withSchema: false });

  it('creates the schema, runs, reloads on SIGHUP, keeps the old config on a bad reload, and drains on SIGTERM', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'hydrant-serve-'));
    const config = join(dir, 'runner.toml');
    writeFileSync(config, `dbUrl = "${db.url}"\nhydraDataDir = "${dir}"\nmaxRetries = 3\nhttpListen = "127.0.0.1:0"\n`);
    const p = startCli(['serve', '--config', config]);
    await p.waitFor(/"msg":"runner running"/);
    expect(p.output()).toMatch(/"msg":"created Hydra schema"/);
    expect(p.output()).not.toContain(new URL(db.url).password); // the URL is logged without its password
    const { rows } = await db.pool.query('select version from schemaversion');
    expect(rows).toEqual([{ version: 87 }]);

    p.child.kill('SIGHUP');
    await p.waitFor(/"msg":"configuration reloaded"/);
    writeFileSync(config, 'maxRetries = "many"\n');
    p.child.kill('SIGHUP');
    await p.waitFor(/configuration reload failed; keeping the previous one/);

    p.child.kill('SIGTERM');
    expect(await p.exited).toBe(0);
    expect(p.output()).toMatch(/"state":"draining"[\s\S]*"state":"stopped"/);
  });
});
