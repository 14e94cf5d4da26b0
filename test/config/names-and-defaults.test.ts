import { mkdtempSync, writeFileSync } from 'node:fs';
import { availableParallelism, tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { loadBuilderConfig } from '../../src/config/builder-config.ts';
import { loadRunnerConfig } from '../../src/config/runner-config.ts';
import { runCli } from '../helpers/cli.ts';

function file(name: string, text: string): string {
  const p = join(mkdtempSync(join(tmpdir(), 'hydrant-names-')), name);
  writeFileSync(p, text);
  return p;
}

describe('token file keys agree between runner and builder', () => {
  it('the runner takes tokenPaths (upstream) or tokenFiles, the builder tokenFile or tokenPath', () => {
    expect(loadRunnerConfig(file('r.toml', 'tokenFiles = ["/a"]\napiTokenFiles = ["/b"]\n'), {}, {})).toMatchObject({ tokenPaths: ['/a'], apiTokenPaths: ['/b'] });
    expect(loadRunnerConfig(file('r.toml', 'tokenPaths = ["/a"]\n'), {}, {}).tokenPaths).toEqual(['/a']);
    expect(loadBuilderConfig(file('b.toml', 'server = "r:1"\ntokenPath = "/t"\n')).tokenFile).toBe('/t');
  });

  it('both spellings at once is one line naming them', () => {
    const p = file('r.toml', 'tokenFiles = ["/a"]\ntokenPaths = ["/b"]\n');
    expect(() => loadRunnerConfig(p, {}, {})).toThrow(`${p}: tokenFiles and tokenPaths are the same setting: keep one of them`);
  });
});

describe("a builder's capacity", () => {
  it("defaults maxJobs to the machine's cores", () => {
    expect(loadBuilderConfig(undefined, { server: 'r:1', tokenFile: '/t' }).maxJobs).toBe(availableParallelism());
  });

  it('takes --max-jobs, --systems and --features from the command line (checked by a builder that cannot read its token)', async () => {
    const r = await runCli(['builder', '--server', '127.0.0.1:1', '--token-file', '/nonexistent/token', '--max-jobs', '3', '--systems', 'x86_64-linux,aarch64-linux', '--features', 'kvm', '--features', 'big-parallel']);
    // Flags are validated before the token is read: only the token is wrong.
    expect(r.stderr).toBe('hydrant: CONFIG_INVALID: /nonexistent/token: cannot read the token (--token-file, tokenFile): no such file\n');
    const bad = await runCli(['builder', '--server', '127.0.0.1:1', '--token-file', '/t', '--max-jobs', 'many']);
    expect(bad.stderr).toBe("hydrant: CONFIG_INVALID: --max-jobs: 'many' is not a positive whole number\n");
    expect(bad.code).toBe(1);
  });

  it('flags reach the validated config', () => {
    const c = loadBuilderConfig(undefined, { server: 'r:1', tokenFile: '/t', maxJobs: 3, systems: ['x86_64-linux', 'aarch64-linux'], supportedFeatures: ['kvm'] });
    expect(c).toMatchObject({ maxJobs: 3, systems: ['x86_64-linux', 'aarch64-linux'], supportedFeatures: ['kvm'] });
  });
});

describe('configuration mistakes, one line each', () => {
  it('a TOML syntax error names file, line and column', async () => {
    const p = file('runner.toml', 'maxRetries = 3\ndbUrl = \n');
    const r = await runCli(['db', 'check', '--config', p]);
    expect(r.stderr).toBe(`hydrant: CONFIG_INVALID: ${p}:2:9: invalid TOML: invalid value\n`);
    expect(r.code).toBe(1);
  });

  it('an unknown key is named with the file', () => {
    const p = file('runner.toml', 'maxRetrys = 3\n');
    expect(() => loadRunnerConfig(p, {}, {})).toThrow(`${p}: unknown key maxRetrys (a typo? docs/OPERATIONS.md lists the keys)`);
  });

  it('a listen address that is not HOST:PORT names the key and flag', () => {
    expect(() => loadRunnerConfig(undefined, { httpListen: '8080' }, {})).toThrow('httpListen (--http-listen): must be HOST:PORT');
    expect(loadRunnerConfig(undefined, { httpListen: '', grpcListen: '[::1]:50051' }, {})).toMatchObject({ httpListen: '', grpcListen: '[::1]:50051' });
  });
});
