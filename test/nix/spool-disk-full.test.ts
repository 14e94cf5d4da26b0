import { execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { hostStore, PrivateStore } from '../../src/nix/private-store.ts';
import { exportPaths, importVerified, queryPathInfos } from '../../src/nix/transfer.ts';
import { DiskWriteError } from '../../src/errors/index.ts';
import { exportFixtures } from './export-fixtures.ts';

/**
 * A builder's import spool on a full disk (a real tmpfs, filled): the
 * import fails with the spool file named, nothing is imported, and it
 * succeeds once the space is back. Mounting needs root.
 */
describe.runIf(process.getuid?.() === 0)('an import spooled to a full disk', () => {
  const dir = mkdtempSync(join(tmpdir(), 'hydrant-spool-full-'));
  const spool = join(dir, 'spool');

  beforeAll(() => {
    execFileSync('mkdir', ['-p', spool]);
    execFileSync('mount', ['-t', 'tmpfs', '-o', 'size=64k', 'tmpfs', spool]);
  });

  afterAll(() => {
    execFileSync('umount', ['-l', spool]);
    rmSync(dir, { recursive: true, force: true });
  });

  it('fails with a DiskWriteError naming the spool file, imports nothing, and succeeds once there is room', async () => {
    const fx = await exportFixtures();
    const store = await PrivateStore.create(join(dir, 'store'));
    const expected = new Map((await queryPathInfos(hostStore, [fx.single])).map((i) => [i.path, { narHash: i.narHash, narSize: i.narSize }]));
    // Everything goes to the spool file (no memory allowance), and the spool's disk is full.
    writeFileSync(join(spool, 'filler'), Buffer.alloc(64 * 1024));
    const err = await importVerified(store, exportPaths(hostStore, [fx.single]), expected, { spoolDir: spool, spoolMemoryLimit: 0 }).then(
      () => null,
      (e: unknown) => e,
    );
    expect(err).toBeInstanceOf(DiskWriteError);
    expect(err).toMatchObject({ code: 'DISK_WRITE', errno: 'ENOSPC' });
    expect((err as DiskWriteError).path).toMatch(new RegExp(`^${spool}/hydrant-import-\\w+/export$`));
    expect((await store.run('nix-store', ['--check-validity', fx.single])).exitCode).not.toBe(0);

    rmSync(join(spool, 'filler'));
    await importVerified(store, exportPaths(hostStore, [fx.single]), expected, { spoolDir: spool, spoolMemoryLimit: 0 });
    expect((await store.run('nix-store', ['--check-validity', fx.single])).exitCode).toBe(0);
  });
});
