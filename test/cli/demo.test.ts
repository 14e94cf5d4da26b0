import { mkdtempSync, readdirSync, readFileSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { EXPECTED_STATUS, statusName } from '../../src/demo/expected.ts';
import { runCli, type CliResult } from '../helpers/cli.ts';
import { runNix } from '../helpers/nix.ts';

/** `hydrant demo --exit-when-done` end to end, twice on one state directory. */
describe('hydrant demo', () => {
  const dir = mkdtempSync(join(tmpdir(), 'hydrant-demo-'));
  let first: CliResult;
  let second: CliResult;
  const seconds: number[] = [];

  beforeAll(async () => {
    for (const run of [0, 1]) {
      const t0 = Date.now();
      const r = await runCli(['demo', '--exit-when-done', '--state-dir', dir]);
      seconds.push((Date.now() - t0) / 1000);
      if (run === 0) first = r;
      else second = r;
    }
  }, 240_000);
  afterAll(() => rmSync(dir, { recursive: true, force: true }));

  function failureContext(r: CliResult): string {
    let log = '';
    try {
      log = readFileSync(join(dir, 'demo.log'), 'utf8').split('\n').slice(-30).join('\n');
    } catch {
      // no log yet
    }
    return `exit ${r.code}\nstdout:\n${r.stdout}\nstderr:\n${r.stderr}\nrunner log (tail):\n${log}`;
  }

  it('builds the jobset for real on both builders and ends with the expected outcome', () => {
    expect(first.code, failureContext(first)).toBe(0);
    const out = first.stdout;
    expect(out).toContain('evaluation 1 of demo:main: 12 builds queued, 0 already there');
    expect(out).toMatch(/builders: demo-builder-1, demo-builder-2 joined/);
    // Plain lines (stdout is not a terminal), one per build as it ends, numbered 1..12.
    const lines = out.split('\n').filter((l) => /^\[\d+\/12\] /.test(l));
    expect(lines.map((l) => Number(/^\[(\d+)/.exec(l)![1]))).toEqual([...Array(12).keys()].map((i) => i + 1));
    for (const [job, status] of Object.entries(EXPECTED_STATUS)) {
      const line = lines.find((l) => l.includes(`] ${job}: `));
      expect(line, `line for ${job}`).toBeDefined();
      expect(line!).toContain(`${job}: ${statusName(status)}`);
      // Built in this run by one of the two builders, not found in a store already.
      if (status === 0) expect(line!).toMatch(/\(built on demo-builder-[12]\)$/);
    }
    expect(out).toMatch(/broken: failed \(on demo-builder-[12]\)/);
    expect(out).toMatch(/plugin: dependency failed$/m);
    expect(out).toMatch(/^Summary: 12 of 12 builds ended in [\d.ms]+$/m);
    expect(out).toMatch(/^ {4}succeeded +10$/m);
    expect(out).toMatch(/^ {4}failed +1$/m);
    expect(out).toMatch(/^ {4}dependency failed +1$/m);
    // Eleven steps ran (broken failed; plugin, which needs it, never ran), spread over both builders.
    const perMachine = [...out.matchAll(/^ {4}(demo-builder-[12]) +(\d+) /gm)].map((m) => [m[1], Number(m[2])] as const);
    expect(perMachine.map(([m]) => m).sort()).toEqual(['demo-builder-1', 'demo-builder-2']);
    expect(perMachine.reduce((n, [, k]) => n + k, 0)).toBe(11);
    expect(out).toContain('outcome: as expected');
    expect(out).toContain('release demo-app-1.0 (job release):');
    expect(out).toContain(`Binary cache: ${dir}/cache (12 store paths, zstd, signed by hydrant-demo-1)`);
    expect(out).toContain(`Keys:         ${dir}/keys/hydrant-demo-1.pub (public), ${dir}/keys/hydrant-demo-1.sec (secret)`);
    expect(out).toMatch(new RegExp(`copy --from file://${dir}/cache --option trusted-public-keys "\\$\\(cat ${dir}/keys/hydrant-demo-1.pub\\)" /nix/store/\\S+-demo-release-1\\.0$`, 'm'));
    // Runner and builder logs went to files, not to the terminal.
    expect(first.stderr).toBe('');
    expect(readFileSync(join(dir, 'demo.log'), 'utf8')).toContain('"msg":"runner stopped"');
    expect(readFileSync(join(dir, 'builders', 'demo-builder-1.log'), 'utf8')).toContain('machine demo-builder-1 connecting');
  });

  it('keeps its keys, token and private stores in the state directory', () => {
    expect(readFileSync(join(dir, 'keys', 'hydrant-demo-1.pub'), 'utf8')).toMatch(/^hydrant-demo-1:[A-Za-z0-9+/]{43}=$/);
    expect(statSync(join(dir, 'keys', 'hydrant-demo-1.sec')).mode & 0o777).toBe(0o600);
    expect(statSync(join(dir, 'builder-token')).mode & 0o777).toBe(0o600);
    if (process.getuid?.() === 0) {
      for (const n of [1, 2]) expect(readdirSync(join(dir, 'builders', String(n), 'nix', 'store')).some((e) => e.endsWith('-demo-toolchain-1.0'))).toBe(true);
    }
  });

  it('publishes every output to the directory cache, signed with the demo key, and Nix accepts it', async () => {
    const cache = join(dir, 'cache');
    const narinfos = readdirSync(cache).filter((f) => f.endsWith('.narinfo'));
    // Ten successful derivations; assets has three outputs.
    expect(narinfos).toHaveLength(12);
    for (const f of narinfos) {
      const text = readFileSync(join(cache, f), 'utf8');
      expect(text).toMatch(/^StorePath: \/nix\/store\/\S+-demo-[a-z]+-1\.0(-dev|-doc)?$/m);
      expect(text).toMatch(/^Compression: zstd$/m);
      expect(text).toMatch(/^Sig: hydrant-demo-1:\S+$/m);
    }
    const pub = readFileSync(join(dir, 'keys', 'hydrant-demo-1.pub'), 'utf8').trim();
    // Real Nix checks every NAR's hash and signature against the public key alone.
    await runNix('nix', ['store', 'verify', '--store', `file://${cache}`, '--option', 'trusted-public-keys', pub, '--all']);
  });

  it('records the release build products (nix-support/hydra-build-products)', () => {
    expect(first.stdout).toMatch(/^ {4}file binary-dist \/nix\/store\/\S+-demo-release-1\.0\/demo-app-1\.0\.tar$/m);
    expect(first.stdout).toMatch(/^ {4}doc manual \/nix\/store\/\S+-demo-release-1\.0\/manual\.html$/m);
  });

  it('a second run on the same state directory finds every build done, with the same outcome', () => {
    expect(second.code, failureContext(second)).toBe(0);
    expect(second.stdout).toContain('evaluation 2 of demo:main: 0 builds queued, 12 already there');
    expect(second.stdout).toContain('outcome: as expected');
    const summary = (r: CliResult) => r.stdout.slice(r.stdout.indexOf('  builds by status:'), r.stdout.indexOf('  outcome:'));
    expect(summary(second)).toBe(summary(first));
    expect(second.stdout).toContain(`Binary cache: ${dir}/cache (12 store paths, zstd, signed by hydrant-demo-1)`);
    // Nothing is built again: each build is reported as the first run recorded it (same builder), and
    // the steps per machine in the summary above are the first run's. (Run times: `npm run -s bench -- demo`.)
    const ended = (r: CliResult) => r.stdout.split('\n').flatMap((l) => /^\[\d+\/12\] (.*)$/.exec(l)?.[1] ?? []).sort();
    expect(ended(second)).toHaveLength(12);
    expect(ended(second)).toEqual(ended(first));
  });
});
