import { describe, expect, it } from 'vitest';
import { loadRunnerConfig, redactUrl } from '../../src/config/runner-config.ts';
import { ConfigError } from '../../src/errors/index.ts';
import { configFile } from '../helpers/config-file.ts';

const file = (text: string): string => configFile(text, 'runner.toml');

describe('runner configuration', () => {
  it('has the upstream defaults and is frozen', () => {
    const c = loadRunnerConfig(undefined, {}, {});
    expect(c).toMatchObject({ maxRetries: 5, retryInterval: 60, retryBackoff: 3, maxUnsupportedTimeInS: 120, queueTriggerTimerInS: -1, dispatchTriggerTimerInS: 120, machineSortFn: 'BogomipsWithSpeedFactor', stepSortFn: 'WithRdeps', maxOutputSize: 0, maxLogSize: 64 * 1024 * 1024 });
    expect(c.stateDir).toBe('/var/lib/hydra/hydrant');
    expect(Object.isFrozen(c)).toBe(true);
  });

  it('dbHeartbeatInS: 5 s unless set, and positive', () => {
    expect(loadRunnerConfig(undefined, {}, {}).dbHeartbeatInS).toBe(5);
    expect(loadRunnerConfig(file('dbHeartbeatInS = 0.5\n'), {}, {}).dbHeartbeatInS).toBe(0.5);
    expect(() => loadRunnerConfig(file('dbHeartbeatInS = 0\n'), {}, {})).toThrow(/dbHeartbeatInS/);
  });

  it('reads upstream keys from TOML; HYDRA_DATABASE_URL wins over dbUrl', () => {
    const p = file('hydraDataDir = "/srv/hydra"\ndbUrl = "postgres://a@h/db"\nmachineSortFn = "BogomipsWithSpeedFactor"\nremoteStoreAddr = ["file:///cache?compression=zstd"]\n');
    expect(loadRunnerConfig(p, {}, {})).toMatchObject({ hydraDataDir: '/srv/hydra', dbUrl: 'postgres://a@h/db', machineSortFn: 'BogomipsWithSpeedFactor', stateDir: '/srv/hydra/hydrant' });
    expect(loadRunnerConfig(p, {}, { HYDRA_DATABASE_URL: 'postgres://env/db' }).dbUrl).toBe('postgres://env/db');
  });

  it('rejects unknown keys, wrong types and bad TOML with one error naming the file and key', () => {
    const typo = file('maxRetrys = 3\n');
    expect(() => loadRunnerConfig(typo, {}, {})).toThrow(ConfigError);
    expect(() => loadRunnerConfig(typo, {}, {})).toThrow(/maxRetrys/);
    expect(() => loadRunnerConfig(file('machineSortFn = "Fastest"\n'), {}, {})).toThrow(/machineSortFn/);
    expect(() => loadRunnerConfig(file('maxRetries = [\n'), {}, {})).toThrow(/invalid TOML/);
    expect(() => loadRunnerConfig('/nonexistent/runner.toml', {}, {})).toThrow(/cannot read/);
  });

  it('redacts passwords from URLs', () => {
    expect(redactUrl('postgres://u:secret@h:5432/db')).toBe('postgres://u:***@h:5432/db');
  });
});
