import { randomBytes } from 'node:crypto';
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import { execFile } from 'node:child_process';
import { basename, join } from 'node:path';
import { promisify } from 'node:util';
import { describe, expect, it } from 'vitest';
import { parseNarInfo } from '../../src/nix/narinfo.ts';
import { countValidSignatures, parsePublicKey } from '../../src/nix/signing.ts';
import { STORE_DIR } from '../../src/nix/store-path.ts';
import { generateKey } from '../cache/fixtures.ts';
import { runCli } from '../helpers/cli.ts';
import { startRunner, submit, useFleet } from '../helpers/fleet.ts';
import { runNix, runNixLines } from '../helpers/nix.ts';
import { waitFor } from '../helpers/runtime.ts';

/**
 * Substituted outputs are published like built ones (docs/SUBSTITUTION.md,
 * "Publishing"), with a real runner, real Nix and no builder at all (so no
 * step can end by being built):
 *
 * - `fetched`: a two-step job in a signed upstream cache, absent from the
 *   store. A first runner, whose cache refuses writes, imports the
 *   dependency, cannot publish it and is SIGKILLed: no row, no narinfo. The
 *   restarted runner substitutes both steps; afterwards the runner's own cache
 *   holds a narinfo signed by the runner's key and the NAR of every output
 *   and of their closure, each output is a GC root, and `hydrant cache gc`
 *   with those roots keeps them while it deletes a path nobody roots.
 * - `crashed`: the state a runner SIGKILLed after importing a substituted
 *   closure and before uploading it leaves behind: the outputs valid in the
 *   store, no narinfo in the runner's cache, no rows. The restarted runner
 *   does not count the steps as built; it publishes them, then writes the
 *   substitution rows and ends the build as cached.
 */
const execFileP = promisify(execFile);

function release(nonce: string): string {
  const mk = (job: string) => `
  ${job}Dep = mk { name = "subpub-${job}-dep-${nonce}"; script = "echo ${job}-dep > $out"; };
  ${job} = mk { name = "subpub-${job}-${nonce}"; script = "echo ${job}-top \${${job}Dep} > $out"; };`;
  return `{ }:
let
  mk = { name, script }: derivation { inherit name; system = builtins.currentSystem; builder = "/bin/sh"; args = [ "-c" script ]; };
  ${mk('fetched')}
  ${mk('crashed')}
  junk = mk { name = "subpub-junk-${nonce}"; script = "echo junk > $out"; };
in { inherit fetched crashed junk; }
`;
}

describe('publishing substituted outputs', () => {
  const { db, dir, procs } = useFleet('subpub');

  it('roots substituted outputs and puts their closure in the runner cache, also after a crash before the upload', async () => {
    const nonce = randomBytes(4).toString('hex');
    const file = join(dir, 'release.nix');
    writeFileSync(file, release(nonce));
    const [fetchedDrv, crashedDrv, junkDrv] = await runNixLines('nix-instantiate', [file, '-A', 'fetched', '-A', 'crashed', '-A', 'junk']);
    const [fetchedTop, crashedTop, junk] = await runNixLines('nix-store', ['--realise', fetchedDrv!, crashedDrv!, junkDrv!]);
    const closureOf = async (p: string) => (await runNixLines('nix-store', ['--query', '--requisites', p])).filter((q) => q.includes(`-${nonce}`));
    const fetched = await closureOf(fetchedTop!);
    const crashed = await closureOf(crashedTop!);
    expect(fetched).toHaveLength(2);
    expect(crashed).toHaveLength(2);

    const upstreamKey = await generateKey(dir, 'subpub-upstream-1');
    const ownKey = await generateKey(dir, 'subpub-own-1');
    const upstream = join(dir, 'upstream');
    const own = join(dir, 'own-cache');
    await runNix('nix', ['--extra-experimental-features', 'nix-command', 'copy', '--to', `file://${upstream}?compression=none&secret-key=${upstreamKey.secretFile}`, fetchedTop!]);
    // A path nobody roots, already in the runner's cache: collection deletes it.
    await runNix('nix', ['--extra-experimental-features', 'nix-command', 'copy', '--to', `file://${own}?compression=none&secret-key=${ownKey.secretFile}`, junk!]);
    await runNix('nix-store', ['--delete', fetchedTop!]);
    await runNix('nix-store', ['--delete', fetched.find((p) => p !== fetchedTop)!]);
    expect(await runNixLines('nix-store', ['--check-validity', '--print-invalid', ...fetched])).toHaveLength(2);
    const narInfoOf = (p: string) => join(own, `${basename(p).slice(0, 32)}.narinfo`);
    for (const p of [...fetched, ...crashed]) expect(existsSync(narInfoOf(p))).toBe(false);

    const roots = join(dir, 'roots');
    const extra = [
      'useSubstitutes = true',
      `substituters = ["file://${upstream}"]`,
      `trustedPublicKeys = ["${upstreamKey.publicKey}"]`,
      `remoteStoreAddr = ["file://${own}?compression=none&secret-key=${ownKey.secretFile}"]`,
    ].join('\n');
    const ids = await submit(db.url, file, 'subpub', ['fetched', 'crashed']);

    // A first runner whose uploads fail (the cache's nar/ immutable): it imports `fetched`'s dependency,
    // cannot publish it, and is SIGKILLed. Nothing says the outputs exist: no row, no narinfo.
    const narDir = join(own, 'nar');
    await execFileP('chattr', ['+i', narDir]);
    try {
      const first = await startRunner(dir, db.url, extra);
      procs.push(first.proc);
      await first.proc.waitFor(new RegExp(`subpub-fetched-dep-${nonce}.*cannot publish the substituted outputs|cannot publish the substituted outputs.*subpub-fetched-dep-${nonce}`), 60_000);
      first.proc.child.kill('SIGKILL');
      await first.proc.exited;
    } finally {
      await execFileP('chattr', ['-i', narDir]);
    }
    expect((await db.pool.query('select count(*)::int n from buildsteps')).rows[0].n).toBe(0);
    expect((await db.pool.query('select count(*)::int n from builds where finished = 0')).rows[0].n).toBe(2);
    const fetchedDep = fetched.find((p) => p !== fetchedTop)!;
    expect(await runNixLines('nix-store', ['--check-validity', '--print-invalid', fetchedDep])).toEqual([]);
    for (const p of [...fetched, ...crashed]) expect(existsSync(narInfoOf(p))).toBe(false);

    // The restarted runner publishes, then writes the rows.
    const runner = await startRunner(dir, db.url, extra);
    procs.push(runner.proc);
    await waitFor(async () => (await db.pool.query('select count(*)::int n from builds where finished = 0')).rows[0].n === 0, 90_000, 'builds to finish');

    const builds = (await db.pool.query<{ id: number; buildstatus: number; iscachedbuild: number }>('select id, buildstatus, iscachedbuild from builds order by id')).rows;
    expect(builds.map((b) => [b.buildstatus, b.iscachedbuild])).toEqual([
      [0, 1],
      [0, 1],
    ]);
    const rows = (await db.pool.query<{ build: number; type: number; status: number; path: string }>(
      'select s.build, s.type, s.status, o.path from buildsteps s join buildstepoutputs o on o.build = s.build and o.stepnr = s.stepnr order by s.build, s.stepnr',
    )).rows;
    for (const [job, paths] of [['fetched', fetched], ['crashed', crashed]] as const) {
      const mine = rows.filter((r) => r.build === ids[job]);
      expect(mine.map((r) => [r.type, r.status])).toEqual(paths.map(() => [1, 0]));
      expect(mine.map((r) => r.path).sort()).toEqual([...paths].sort());
    }

    // Every output and its closure in the runner's cache: signed by its key, NAR present and of the announced size.
    const key = parsePublicKey(ownKey.publicKey);
    for (const p of [...fetched, ...crashed]) {
      const info = parseNarInfo(readFileSync(narInfoOf(p), 'utf8'));
      expect(info.storePath).toBe(p);
      expect(countValidSignatures([key], { storePath: p, narHash: info.narHash, narSize: info.narSize, references: info.references.map((r) => `${STORE_DIR}/${r}`) }, info.sigs)).toBe(1);
      expect(readFileSync(join(own, info.url)).length).toBe(info.narSize);
      // Rooted like a built output.
      expect(existsSync(join(roots, basename(p)))).toBe(true);
    }

    // Collection with the runner's roots keeps them all and deletes the unrooted path.
    const gc = await runCli(['cache', 'gc', '--store', `file://${own}`, '--roots-dir', roots, '--min-age', '0s']);
    expect(gc.code, gc.stderr).toBe(0);
    expect(existsSync(narInfoOf(junk!))).toBe(false);
    for (const p of [...fetched, ...crashed]) expect(existsSync(narInfoOf(p))).toBe(true);
  }, 240_000);
});
