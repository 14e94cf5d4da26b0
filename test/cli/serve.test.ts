import { writeFileSync, mkdtempSync, statSync, utimesSync } from 'node:fs';
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

  it('SIGHUP re-reads the machines files, even an edit their stamps do not show', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'hydrant-serve-hup-'));
    const machines = join(dir, 'machines');
    writeFileSync(machines, 'ssh://aa x86_64-linux - 1 1\n');
    const config = join(dir, 'runner.toml');
    // Checked by their stamps once an hour: only SIGHUP can make the runner read them again in this test.
    writeFileSync(config, `dbUrl = "${db.url}"\nhydraDataDir = "${dir}"\nhttpListen = "127.0.0.1:0"\nmachinesFiles = ["${machines}"]\nmachinesFilesCheckInS = 3600\n`);
    const p = startCli(['serve', '--config', config]);
    const port = /"port":(\d+)/.exec(await p.waitFor(/"port":\d+,"writes":\w+,"msg":"HTTP API listening"/))![1];
    await p.waitFor(/"machine":"ssh:\/\/aa".*"msg":"SSH machine added"/);
    // Same inode, size and mtime: the stamps the periodic check compares are unchanged.
    const before = statSync(machines);
    writeFileSync(machines, 'ssh://bb x86_64-linux - 1 1\n');
    utimesSync(machines, before.atime, before.mtime);
    p.child.kill('SIGHUP');
    await p.waitFor(/"machine":"ssh:\/\/bb".*"msg":"SSH machine added"/);
    await p.waitFor(/"machine":"ssh:\/\/aa".*"msg":"SSH machine left"/);
    const listed = (await (await fetch(`http://127.0.0.1:${port}/status/machines`)).json()) as { machines: Record<string, unknown> };
    expect(Object.keys(listed.machines)).toEqual(['ssh://bb']);
    p.child.kill('SIGTERM');
    expect(await p.exited).toBe(0);
  });
});
