import { randomBytes } from 'node:crypto';
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import { basename, join } from 'node:path';
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
 * With `useSubstitutes = false`, outputs valid in the runner's store but
 * missing from its cache are published from the store, not built
 * (docs/SUBSTITUTION.md, "Without useSubstitutes"), with a real runner, real
 * Nix and no builder at all (so no step can end by being built):
 *
 * - `local`: a two-step job built by Nix in the runner's store, in no cache.
 *   Its build ends cached, with a type-1 row per output (as Hydra's C++
 *   runner writes for a copy from its local store), both outputs signed in
 *   the runner's cache, rooted, and kept by `hydrant cache gc`.
 * - `remote`: a job whose outputs are only in a signed cache listed in
 *   `substituters`: with `useSubstitutes = false` it is not asked, so the
 *   job waits for a builder, nothing fetched, no row.
 */
function release(nonce: string): string {
  const mk = (job: string) => `
  ${job}Dep = mk { name = "lsp-${job}-dep-${nonce}"; script = "echo ${job}-dep > $out"; };
  ${job} = mk { name = "lsp-${job}-${nonce}"; script = "echo ${job}-top \${${job}Dep} > $out"; };`;
  return `{ }:
let
  mk = { name, script }: derivation { inherit name; system = builtins.currentSystem; builder = "/bin/sh"; args = [ "-c" script ]; };
  ${mk('local')}
  ${mk('remote')}
  junk = mk { name = "lsp-junk-${nonce}"; script = "echo junk > $out"; };
in { inherit local remote junk; }
`;
}

describe('outputs in the store, missing from a cache, without useSubstitutes', () => {
  const { db, dir, procs } = useFleet('lsp');

  it('are published from the store and rooted, not built; substituters are not asked', async () => {
    const nonce = randomBytes(4).toString('hex');
    const file = join(dir, 'release.nix');
    writeFileSync(file, release(nonce));
    const [localDrv, remoteDrv, junkDrv] = await runNixLines('nix-instantiate', [file, '-A', 'local', '-A', 'remote', '-A', 'junk']);
    const [localTop, remoteTop, junk] = await runNixLines('nix-store', ['--realise', localDrv!, remoteDrv!, junkDrv!]);
    const closureOf = async (p: string) => (await runNixLines('nix-store', ['--query', '--requisites', p])).filter((q) => q.includes(`-${nonce}`));
    const local = await closureOf(localTop!);
    const remote = await closureOf(remoteTop!);
    expect(local).toHaveLength(2);
    expect(remote).toHaveLength(2);

    const upstreamKey = await generateKey(dir, 'lsp-upstream-1');
    const ownKey = await generateKey(dir, 'lsp-own-1');
    const upstream = join(dir, 'upstream');
    const own = join(dir, 'own-cache');
    // `remote` only upstream; `local` only in the runner's store.
    await runNix('nix', ['copy', '--to', `file://${upstream}?compression=none&secret-key=${upstreamKey.secretFile}`, remoteTop!]);
    await runNix('nix-store', ['--delete', remoteTop!]);
    await runNix('nix-store', ['--delete', remote.find((p) => p !== remoteTop)!]);
    expect(await runNixLines('nix-store', ['--check-validity', '--print-invalid', ...remote])).toHaveLength(2);
    // A path nobody roots, already in the runner's cache: collection deletes it.
    await runNix('nix', ['copy', '--to', `file://${own}?compression=none&secret-key=${ownKey.secretFile}`, junk!]);
    const narInfoOf = (p: string) => join(own, `${basename(p).slice(0, 32)}.narinfo`);
    for (const p of [...local, ...remote]) expect(existsSync(narInfoOf(p))).toBe(false);

    const roots = join(dir, 'roots');
    const extra = [
      'useSubstitutes = false',
      `substituters = ["file://${upstream}"]`,
      `trustedPublicKeys = ["${upstreamKey.publicKey}"]`,
      `remoteStoreAddr = ["file://${own}?compression=none&secret-key=${ownKey.secretFile}"]`,
    ].join('\n');
    const ids = await submit(db.url, file, 'lsp', ['local', 'remote']);
    const runner = await startRunner(dir, db.url, extra);
    procs.push(runner.proc);
    await waitFor(async () => (await db.pool.query('select finished from builds where id = $1', [ids.local])).rows[0].finished === 1, 60_000, 'the local build to finish');

    const build = (await db.pool.query<{ buildstatus: number; iscachedbuild: number }>('select buildstatus, iscachedbuild from builds where id = $1', [ids.local])).rows[0]!;
    expect([build.buildstatus, build.iscachedbuild]).toEqual([0, 1]);
    const rows = (await db.pool.query<{ build: number; type: number; status: number; path: string }>(
      'select s.build, s.type, s.status, o.path from buildsteps s join buildstepoutputs o on o.build = s.build and o.stepnr = s.stepnr order by s.build, s.stepnr',
    )).rows;
    // One type-1 row per output copied from the store; none for `remote`.
    expect(rows.filter((r) => r.build === ids.local).map((r) => [r.type, r.status])).toEqual([
      [1, 0],
      [1, 0],
    ]);
    expect(rows.filter((r) => r.build === ids.local).map((r) => r.path).sort()).toEqual([...local].sort());
    expect(rows.filter((r) => r.build === ids.remote)).toEqual([]);
    // Its dependency passed the preparer with `local`'s first step: the upstream cache was not asked.
    expect((await db.pool.query('select finished from builds where id = $1', [ids.remote])).rows[0].finished).toBe(0);
    expect(await runNixLines('nix-store', ['--check-validity', '--print-invalid', ...remote])).toHaveLength(2);

    const key = parsePublicKey(ownKey.publicKey);
    for (const p of local) {
      const info = parseNarInfo(readFileSync(narInfoOf(p), 'utf8'));
      expect(info.storePath).toBe(p);
      expect(countValidSignatures([key], { storePath: p, narHash: info.narHash, narSize: info.narSize, references: info.references.map((r) => `${STORE_DIR}/${r}`) }, info.sigs)).toBe(1);
      expect(readFileSync(join(own, info.url)).length).toBe(info.narSize);
      expect(existsSync(join(roots, basename(p)))).toBe(true);
    }
    for (const p of remote) expect(existsSync(narInfoOf(p))).toBe(false);

    const gc = await runCli(['cache', 'gc', '--store', `file://${own}`, '--roots-dir', roots, '--min-age', '0s']);
    expect(gc.code, gc.stderr).toBe(0);
    expect(existsSync(narInfoOf(junk!))).toBe(false);
    for (const p of local) expect(existsSync(narInfoOf(p))).toBe(true);
  }, 180_000);
});
