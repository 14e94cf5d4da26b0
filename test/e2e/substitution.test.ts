import { randomBytes } from 'node:crypto';
import { readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { joined, startBuilder, startRunner, submit, useFleet } from '../helpers/fleet.ts';
import { runNix, runNixLines } from '../helpers/nix.ts';
import { waitFor } from '../helpers/runtime.ts';
import { generateKey } from '../cache/fixtures.ts';

/**
 * Substitution with a real runner process, a real builder and real Nix 2.8:
 * three two-step jobs (a top output referring to its dependency's) are built
 * once, copied by `nix copy` into three file:// caches and deleted from the
 * store: one cache signed by a trusted key, one by a key not trusted, one
 * signed by the trusted key with a NAR changed afterwards. The first job is
 * substituted (substitution rows, no build step), the other two are refused
 * with one log line each and built by the builder.
 */
function release(nonce: string): string {
  const mk = (job: string) => `
  ${job}Dep = mk { name = "subst-${job}-dep-${nonce}"; script = "echo payload-${job}-dep > $out"; };
  ${job} = mk { name = "subst-${job}-${nonce}"; script = "echo payload-${job}-top \${${job}Dep} > $out"; };`;
  return `{ }:
let
  mk = { name, script }: derivation { inherit name; system = builtins.currentSystem; builder = "/bin/sh"; args = [ "-c" script ]; };
  ${mk('good')}
  ${mk('badsig')}
  ${mk('corrupt')}
in { inherit good badsig corrupt; }
`;
}

interface Row {
  build: number;
  type: number;
  status: number | null;
  drvpath: string;
}

describe('substitution from binary caches', () => {
  const { db, dir, procs } = useFleet('subst');

  it('substitutes a build from a signed cache, and builds those whose cache has a wrong signature or a corrupted NAR', async () => {
    const nonce = randomBytes(4).toString('hex');
    const file = join(dir, 'release.nix');
    writeFileSync(file, release(nonce));
    const jobs = ['good', 'badsig', 'corrupt'] as const;
    const drvs = await runNixLines('nix-instantiate', [file, ...jobs.flatMap((j) => ['-A', j])]);
    const tops = await runNixLines('nix-store', ['--realise', ...drvs]);
    const trusted = await generateKey(dir, 'subst-trusted-1');
    const other = await generateKey(dir, 'subst-other-1');
    const cache = (j: string) => join(dir, `cache-${j}`);
    const keyOf = { good: trusted, badsig: other, corrupt: trusted };
    for (const [i, j] of jobs.entries()) {
      await runNix('nix', ['--extra-experimental-features', 'nix-command', 'copy', '--to', `file://${cache(j)}?compression=none&secret-key=${keyOf[j].secretFile}`, tops[i]!]);
    }
    // The corrupted cache: the top path's NAR changed in place (same size, other hash).
    const narDir = join(cache('corrupt'), 'nar');
    let changed = 0;
    for (const f of readdirSync(narDir)) {
      const bytes = readFileSync(join(narDir, f));
      const at = bytes.indexOf('payload-corrupt-top');
      if (at < 0) continue;
      bytes.write('PAYLOAD', at);
      writeFileSync(join(narDir, f), bytes);
      changed++;
    }
    expect(changed).toBe(1);
    // Gone from the runner's store (tops first: they refer to their dependencies).
    const closure = await runNixLines('nix-store', ['--query', '--requisites', ...tops]);
    const outputs = closure.filter((p) => p.includes(`-${nonce}`) && !p.endsWith('.drv'));
    expect(outputs).toHaveLength(6);
    await runNix('nix-store', ['--delete', ...tops]);
    await runNix('nix-store', ['--delete', ...outputs.filter((p) => !tops.includes(p))]);
    expect((await runNixLines('nix-store', ['--check-validity', '--print-invalid', ...outputs])).sort()).toEqual([...outputs].sort());

    const extra = [
      'useSubstitutes = true',
      `substituters = [${jobs.map((j) => `"file://${cache(j)}"`).join(', ')}]`,
      `trustedPublicKeys = ["${trusted.publicKey}"]`,
      'retryInterval = 1',
      'retryBackoff = 1',
    ].join('\n');
    const runner = await startRunner(dir, db.url, extra);
    procs.push(runner.proc);
    const builder = startBuilder(dir, `127.0.0.1:${runner.port}`, runner.tokenFile, 'subst-builder-1');
    procs.push(builder);
    await joined(runner.proc, ['subst-builder-1']);
    const ids = await submit(db.url, file, 'subst', [...jobs]);
    await waitFor(async () => (await db.pool.query('select count(*)::int n from builds where finished = 0')).rows[0].n === 0, 120_000, 'builds to finish');

    const builds = (await db.pool.query<{ id: number; buildstatus: number; iscachedbuild: number }>('select id, buildstatus, iscachedbuild from builds order by id')).rows;
    expect(builds.map((b) => b.buildstatus)).toEqual([0, 0, 0]);
    const rows = (await db.pool.query<Row>('select build, type, status, drvpath from buildsteps order by build, stepnr')).rows;
    const of = (j: string) => rows.filter((r) => r.build === ids[j]);
    // Substituted: one type-1 row per output of each step (dependency and top), status 0; nothing built.
    expect(of('good').map((r) => [r.type, r.status, r.drvpath])).toEqual(
      expect.arrayContaining([
        [1, 0, drvs[0]],
        [1, 0, expect.stringMatching(new RegExp(`-subst-good-dep-${nonce}\\.drv$`))],
      ]),
    );
    expect(of('good').filter((r) => r.type !== 1)).toEqual([]);
    expect(builds.find((b) => b.id === ids.good)!.iscachedbuild).toBe(1);
    const outRows = (await db.pool.query<{ path: string }>('select path from buildstepoutputs where build = $1', [ids.good])).rows.map((r) => r.path).sort();
    expect(outRows).toEqual(outputs.filter((p) => p.includes('-subst-good-')).sort());
    // Refused: the top step built by the builder instead (a type-0 row with status 0). The untrusted
    // cache gave nothing; the corrupted one's dependency, intact and signed, was substituted.
    for (const j of ['badsig', 'corrupt']) {
      expect(of(j).filter((r) => r.type === 1 && r.drvpath === drvs[jobs.indexOf(j as (typeof jobs)[number])])).toEqual([]);
      expect(of(j).some((r) => r.type === 0 && r.status === 0 && r.drvpath === drvs[jobs.indexOf(j as (typeof jobs)[number])])).toBe(true);
    }
    expect(of('badsig').filter((r) => r.type === 1)).toEqual([]);
    expect(of('corrupt').filter((r) => r.type === 1).map((r) => r.drvpath)).toEqual([expect.stringMatching(new RegExp(`-subst-corrupt-dep-${nonce}\\.drv$`))]);
    // One clear line per refused cache entry.
    const refusals = runner.proc.output().split('\n').filter((l) => l.includes('substitution refused'));
    expect(refusals.some((l) => l.includes('trustedPublicKeys') && l.includes(`subst-badsig-`))).toBe(true);
    expect(refusals.some((l) => /NAR|hash/i.test(l) && l.includes(`subst-corrupt-`))).toBe(true);
    // Every output valid in the runner's store again.
    expect(await runNixLines('nix-store', ['--check-validity', '--print-invalid', ...outputs])).toEqual([]);
  });
});
