import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { loadRunnerConfig } from '../../src/config/runner-config.ts';
import { startCli } from '../helpers/cli.ts';
import { createTestDatabase, type TestDatabase } from '../helpers/db.ts';

/**
 * Every key of Hydra's Rust queue runner configuration
 * (subprojects/hydra-queue-runner/src/config.rs:198-286, `struct AppConfig`,
 * `rename_all = "camelCase"`), with a value of the type it takes there.
 */
const UPSTREAM_TOML = `
hydraDataDir = "/srv/hydra"
dbUrl = "postgres://hydra@db/hydra"
maxDbConnections = 16
machineSortFn = "CpuCoreCountWithSpeedFactor"
machineFreeFn = "Dynamic"
stepSortFn = "WithCriticalPath"
dispatchTriggerTimerInS = 60
queueTriggerTimerInS = 30
remoteStoreAddr = ["file:///srv/cache"]
useSubstitutes = true
rootsDir = "/srv/roots"
maxRetries = 3
retryInterval = 30
retryBackoff = 2.0
maxUnsupportedTimeInS = 60
stopQueueRunAfterInS = 30
maxConcurrentDownloads = 4
concurrentUploadLimit = 4
tokenPaths = []
enableFodChecker = true
usePresignedUploads = true
maxOutputSize = 1073741824
maxSilentTime = 600
buildTimeout = 7200
maxLogSize = 1048576
forcedSubstituters = ["https://cache.nixos.org"]
overflowStore = { store = "s3://overflow", jobsets = ["nixpkgs:trunk"] }
`;

function file(dir: string, text: string): string {
  const p = join(dir, 'runner.toml');
  writeFileSync(p, text);
  return p;
}

describe("Hydra's Rust queue runner keys", () => {
  let db: TestDatabase;
  beforeAll(async () => {
    db = await createTestDatabase();
  });
  afterAll(() => db.drop());

  it('accepts every key; the ones Hydrant does not act on are named', () => {
    const c = loadRunnerConfig(file(mkdtempSync(join(tmpdir(), 'hydrant-cfg-')), UPSTREAM_TOML), {}, {});
    expect(c).toMatchObject({ maxRetries: 3, stepSortFn: 'WithCriticalPath', machineFreeFn: 'Dynamic', maxOutputSize: 1073741824, maxSilentTime: 600, buildTimeout: 7200 });
    expect([...c.withoutEffect].sort()).toEqual(
      ['concurrentUploadLimit', 'enableFodChecker', 'forcedSubstituters', 'maxConcurrentDownloads', 'overflowStore', 'stopQueueRunAfterInS'].sort(),
    );
  });

  it('has upstream defaults (config.rs:84-146 and the #[default] variants at :149-173)', () => {
    const c = loadRunnerConfig(undefined, {}, {});
    expect(c).toMatchObject({
      maxDbConnections: 128, machineSortFn: 'BogomipsWithSpeedFactor', machineFreeFn: 'Static', stepSortFn: 'WithRdeps',
      dispatchTriggerTimerInS: 120, queueTriggerTimerInS: -1, useSubstitutes: false, maxRetries: 5, retryInterval: 60, retryBackoff: 3,
      maxUnsupportedTimeInS: 120, stopQueueRunAfterInS: 60, maxConcurrentDownloads: 5, concurrentUploadLimit: 5, enableFodChecker: false,
      usePresignedUploads: false, maxOutputSize: 0, maxSilentTime: 3600, buildTimeout: 36000, maxLogSize: 64 << 20, forcedSubstituters: [],
    });
    expect(c.withoutEffect).toEqual([]);
  });

  it('refuses an overflowStore that is not s3:// as upstream does (config.rs:184-191)', () => {
    const p = file(mkdtempSync(join(tmpdir(), 'hydrant-cfg-')), 'overflowStore = { store = "file:///x", jobsets = [] }\n');
    expect(() => loadRunnerConfig(p, {}, {})).toThrow(/overflowStore[\s\S]*s3:\/\//);
  });

  it('warns once at start, by name, about the keys that have no effect', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'hydrant-cfg-'));
    const config = file(dir, `dbUrl = "${db.url}"\nhydraDataDir = "${dir}"\nhttpListen = "127.0.0.1:0"\nstopQueueRunAfterInS = 30\nenableFodChecker = true\nmaxRetries = 3\n`);
    const p = startCli(['serve', '--config', config]);
    await p.waitFor(/"msg":"runner running"/);
    p.child.kill('SIGTERM');
    expect(await p.exited).toBe(0);
    const warnings = p.output().split('\n').filter((l) => l.includes('have no effect in Hydrant'));
    expect(warnings).toHaveLength(1);
    expect(warnings[0]).toContain('stopQueueRunAfterInS, enableFodChecker');
    expect(warnings[0]).not.toContain('maxRetries');
  });
});
