import { execFile } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync, mkdtempSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { basename, join } from 'node:path';
import { promisify } from 'node:util';
import { describe, expect, it } from 'vitest';
import { parseNarInfo } from '../../src/nix/narinfo.ts';
import { PrivateStore } from '../../src/nix/private-store.ts';
import { parseRealisation, realisationSignedBy } from '../../src/nix/realisation.ts';
import { countValidSignatures, parsePublicKey } from '../../src/nix/signing.ts';
import { STORE_DIR } from '../../src/nix/store-path.ts';
import { generateKey, trusting } from '../cache/fixtures.ts';
import { runCli } from '../helpers/cli.ts';
import { startRunner, submit, useFleet } from '../helpers/fleet.ts';
import { CA_MK_DRV, runNix, runNixLines } from '../helpers/nix.ts';
import { waitFor } from '../helpers/runtime.ts';

/**
 * Content-addressed outputs the runner finds built (a realisation names
 * them, their paths are valid in its store, so nothing is built) are
 * published like built ones (docs/CA-DERIVATIONS.md, "Outputs found built"), with a
 * real runner, real Nix 2.8 and no builder at all: `a` (floating CA, no
 * inputs: the "built before" path) and `b` (floating CA on `a`, its output
 * referencing `a`'s: resolved, and the resolved derivation found built) were
 * built by Nix in the runner's store, none of it in the runner's cache.
 * A first runner, whose cache refuses writes, writes no row and is SIGKILLed;
 * after the restarted runner the cache holds both outputs (signed, NAR present) and their
 * realisations, both are GC roots, `hydrant cache gc` keeps them while it
 * deletes a path nobody roots, and Nix in a fresh store substitutes `b`
 * through the realisations without building anything.
 */
const execFileP = promisify(execFile);

function release(nonce: string): string {
  return `{ }:
let
  ${CA_MK_DRV}
  a = mk { name = "cabb-a-${nonce}"; script = "echo a > $out"; extra = ca; };
  b = mk { name = "cabb-b-${nonce}"; script = "echo b \${a} > $out"; extra = ca; };
  junk = mk { name = "cabb-junk-${nonce}"; script = "echo junk > $out"; };
in { inherit a b junk; }
`;
}

describe('content-addressed outputs found built', () => {
  const { db, dir, procs } = useFleet('cabb');

  it('are rooted and published with their closure and realisations before any row, so gc keeps them and Nix substitutes them', async () => {
    const nonce = randomBytes(4).toString('hex');
    const file = join(dir, 'release.nix');
    writeFileSync(file, release(nonce));
    const [aDrv, bDrv, junkDrv] = await runNixLines('nix-instantiate', [file, '-A', 'a', '-A', 'b', '-A', 'junk']);
    // Built by Nix in the runner's store: realisations registered there, nothing in any cache.
    const [aOut, bOut, junk] = await runNixLines('nix-store', ['--realise', aDrv!, bDrv!, junkDrv!]);
    expect(await runNixLines('nix-store', ['--query', '--references', bOut!])).toContain(aOut);

    const ownKey = await generateKey(dir, 'cabb-own-1');
    const own = join(dir, 'own-cache');
    // A path nobody roots, already in the runner's cache: collection deletes it.
    await runNix('nix', ['copy', '--to', `file://${own}?compression=none&secret-key=${ownKey.secretFile}`, junk!]);
    const narInfoOf = (p: string) => join(own, `${basename(p).slice(0, 32)}.narinfo`);
    for (const p of [aOut!, bOut!]) expect(existsSync(narInfoOf(p))).toBe(false);

    const roots = join(dir, 'roots');
    const extra = `remoteStoreAddr = ["file://${own}?compression=none&secret-key=${ownKey.secretFile}"]`;
    await submit(db.url, file, 'cabb', ['a', 'b']);

    // A first runner whose uploads fail (the cache's nar/ immutable) cannot publish a's output: no row
    // says it exists, the step waits for a builder instead (there is none), and the runner is SIGKILLed.
    const narDir = join(own, 'nar');
    await execFileP('chattr', ['+i', narDir]);
    try {
      const first = await startRunner(dir, db.url, extra);
      procs.push(first.proc);
      await first.proc.waitFor(/cannot publish the outputs of a derivation built before; building it/, 60_000);
      first.proc.child.kill('SIGKILL');
      await first.proc.exited;
    } finally {
      await execFileP('chattr', ['-i', narDir]);
    }
    expect((await db.pool.query('select count(*)::int n from buildsteps')).rows[0].n).toBe(0);
    expect((await db.pool.query('select count(*)::int n from builds where finished = 0')).rows[0].n).toBe(2);
    for (const p of [aOut!, bOut!]) expect(existsSync(narInfoOf(p))).toBe(false);

    // The restarted runner publishes, then writes the rows.
    const runner = await startRunner(dir, db.url, extra);
    procs.push(runner.proc);
    await waitFor(async () => (await db.pool.query('select count(*)::int n from builds where finished = 0')).rows[0].n === 0, 90_000, 'builds to finish');

    const builds = (await db.pool.query<{ buildstatus: number; iscachedbuild: number }>('select buildstatus, iscachedbuild from builds order by id')).rows;
    expect(builds.map((b) => [b.buildstatus, b.iscachedbuild])).toEqual([
      [0, 1],
      [0, 1],
    ]);
    const outs = (await db.pool.query<{ path: string }>('select path from buildoutputs order by build')).rows.map((r) => r.path);
    expect(outs).toEqual([aOut, bOut]);

    // Both outputs in the runner's cache, signed by its key, NAR present; rooted like built outputs.
    const key = parsePublicKey(ownKey.publicKey);
    for (const p of [aOut!, bOut!]) {
      const info = parseNarInfo(readFileSync(narInfoOf(p), 'utf8'));
      expect(info.storePath).toBe(p);
      expect(countValidSignatures([key], { storePath: p, narHash: info.narHash, narSize: info.narSize, references: info.references.map((r) => `${STORE_DIR}/${r}`) }, info.sigs)).toBe(1);
      expect(readFileSync(join(own, info.url)).length).toBe(info.narSize);
      expect(existsSync(join(roots, basename(p)))).toBe(true);
    }
    // Their realisations, signed: a's own, b's (original) and the resolved b's.
    const dois = readdirSync(join(own, 'realisations')).map((f) => parseRealisation(readFileSync(join(own, 'realisations', f), 'utf8')));
    for (const r of dois) expect(realisationSignedBy([key], r)).toBe(true);
    expect(dois.filter((r) => `${STORE_DIR}/${r.outPath}` === aOut).length).toBeGreaterThanOrEqual(1);
    expect(dois.filter((r) => `${STORE_DIR}/${r.outPath}` === bOut).length).toBeGreaterThanOrEqual(2);

    // Collection with the runner's roots keeps them and deletes the unrooted path.
    const gc = await runCli(['cache', 'gc', '--store', `file://${own}`, '--roots-dir', roots, '--min-age', '0s']);
    expect(gc.code, gc.stderr).toBe(0);
    expect(existsSync(narInfoOf(junk!))).toBe(false);
    for (const p of [aOut!, bOut!]) expect(existsSync(narInfoOf(p))).toBe(true);

    // Real Nix, in a fresh store with only the .drv files and this cache, substitutes b and builds nothing.
    const fresh = await PrivateStore.create(mkdtempSync(join(tmpdir(), 'hydrant-e2e-cabb-fresh-')));
    const closure = await runNixLines('nix-store', ['-qR', bDrv!]);
    await fresh.runChecked('nix-store', ['--import'], { input: (await runNix('nix-store', ['--export', ...closure])).stdout });
    const r = await fresh.runChecked('nix-store', ['--realise', bDrv!], { extraConfig: `substituters = file://${own}\n${trusting(ownKey.publicKey)}` });
    expect(r.stdout.toString().trim()).toBe(bOut);
    expect(r.stderr.toString()).not.toMatch(/building '/);
  }, 240_000);
});
