import { randomBytes } from 'node:crypto';
import { existsSync, mkdtempSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { joined, startBuilder, startRunner, submit, useFleet } from '../helpers/fleet.ts';
import { CA_MK_DRV, runNix, runNixLines } from '../helpers/nix.ts';
import { waitFor } from '../helpers/runtime.ts';
import { PrivateStore } from '../../src/nix/private-store.ts';
import { parseRealisation, realisationSignedBy } from '../../src/nix/realisation.ts';
import { parsePublicKey } from '../../src/nix/signing.ts';
import { generateKey, trusting } from '../cache/fixtures.ts';

/**
 * Issue 13's acceptance release through a real runner process and two real
 * builder processes with private stores (Nix 2.8, ca-derivations):
 * - a chain CA (a) → CA (b) → input-addressed (c);
 * - a diamond: two builds (left, right) whose CA derivations share the CA
 *   dependency s, and a CA top needing both;
 * - a CA derivation that fails (fb, needing a) and the build depending on it
 *   (fc); queued again, fb ends as a cached failure of its resolved
 *   derivation without being built;
 * - a CA derivation (v) whose output the runner's store already has (built
 *   there by Nix, outside Hydra), and a CA derivation needing it (w): v is not
 *   built, its path comes from the store's realisation;
 * then Nix 2.8, in a fresh store with only the .drv files and Hydrant's cache
 * as substituter, substitutes the CA outputs and builds nothing.
 */
function release(nonce: string, gate: string): string {
  return `{ }:
let
${CA_MK_DRV}  cam = name: script: mk { name = "\${name}-${nonce}"; inherit script; extra = ca; };
  # Each builds until the gate opens, which the test does once both builders hold one: both have work.
  a = cam "a" "while [ ! -e ${gate} ]; do /bin/sleep 0.1; done; echo a > $out";
  b = cam "b" "read x < \${a}; echo b $x > $out";
  s = cam "s" "while [ ! -e ${gate} ]; do /bin/sleep 0.1; done; echo s > $out";
  left = cam "left" "read x < \${s}; echo left $x > $out";
  right = cam "right" "read x < \${s}; echo right $x > $out";
  fb = cam "fb" "read x < \${a}; echo failing on $x; exit 1";
  v = cam "v" "echo v > $out";
in {
  c = mk { name = "c-${nonce}"; script = "read x < \${b}; echo c $x > $out"; };
  inherit left right fb v;
  top = cam "top" "read x < \${left}; read y < \${right}; echo $x $y > $out";
  fc = mk { name = "fc-${nonce}"; script = "read x < \${fb}; echo $x > $out"; };
  w = cam "w" "read x < \${v}; echo w $x > $out";
}
`;
}

interface Step {
  build: number;
  stepnr: number;
  drvpath: string;
  status: number | null;
  busy: number;
  machine: string;
  resolveddrvpath: string | null;
  propagatedfrom: number | null;
}

describe('content-addressed derivations through two builders', () => {
  const fleet = useFleet('ca-two');
  const { dir } = fleet;

  const steps = async (): Promise<Step[]> =>
    (await fleet.db.pool.query<Step>('select build, stepnr, drvpath, status, busy, machine, resolveddrvpath, propagatedfrom from buildsteps order by build, stepnr')).rows;
  const unfinished = async (): Promise<number> => (await fleet.db.pool.query('select count(*)::int n from builds where finished = 0')).rows[0].n;
  const drvOf = (nonce: string, name: string, all: string[]) => all.find((p) => p.endsWith(`-${name}-${nonce}.drv`))!;

  it('builds a chain, a diamond, a failure and an already-valid CA derivation through resolution, and Nix 2.8 substitutes the CA outputs from the cache', async () => {
    const nonce = randomBytes(4).toString('hex');
    const file = join(dir, 'release.nix');
    const gate = join(dir, 'both-building');
    writeFileSync(file, release(nonce, gate));
    const jobs = ['c', 'left', 'right', 'top', 'fb', 'fc', 'v', 'w'];
    const toplevels = await runNixLines('nix-instantiate', [file, ...jobs.flatMap((j) => ['-A', j])]);
    const top = Object.fromEntries(jobs.map((j, i) => [j, toplevels[i]!]));
    const all = await runNixLines('nix-store', ['-qR', ...toplevels]);
    const drv = (name: string) => drvOf(nonce, name, all);
    // v is built in the runner's store by Nix itself, before Hydrant sees it: a realisation, no row.
    const [vOut] = await runNixLines('nix-store', ['--realise', top.v!]);

    const key = await generateKey(dir, 'ca-two-1');
    const cacheDir = join(dir, 'cache');
    const runner = await startRunner(dir, fleet.db.url, `remoteStoreAddr = ["file://${cacheDir}?compression=none&secret-key=${key.secretFile}"]\nretryInterval = 1\nretryBackoff = 1`);
    fleet.procs.push(runner.proc);
    for (const id of ['ca-b1', 'ca-b2']) fleet.procs.push(startBuilder(dir, `127.0.0.1:${runner.port}`, runner.tokenFile, id));
    await joined(runner.proc, ['ca-b1', 'ca-b2']);

    const ids = await submit(fleet.db.url, file, 'ca-two', jobs);
    try {
      await waitFor(async () => new Set((await steps()).filter((r) => r.busy !== 0).map((r) => r.machine)).size === 2, 120_000, 'both builders to build');
    } finally {
      writeFileSync(gate, '');
    }
    await waitFor(async () => (await unfinished()) === 0, 240_000, 'the release to finish');
    const status = Object.fromEntries((await fleet.db.pool.query('select job, buildstatus from builds')).rows.map((r) => [r.job, r.buildstatus]));
    expect(status).toEqual({ c: 0, left: 0, right: 0, top: 0, fb: 1, fc: 2, v: 0, w: 0 });
    const rows = await steps();
    expect(rows.filter((r) => r.busy !== 0)).toEqual([]);
    // Both builders built steps.
    expect(new Set(rows.filter((r) => r.status === 0).map((r) => r.machine))).toEqual(new Set(['ca-b1', 'ca-b2']));

    // Every CA derivation with inputs was resolved (13, naming its resolved .drv), never built as it is;
    // the resolved derivations are built once each.
    const withInputs = ['b', 'left', 'right', 'top', 'fb', 'w'].map(drv);
    const resolvedOf = new Map<string, string>();
    for (const d of [...withInputs, top.c!]) {
      const r13 = rows.filter((r) => r.status === 13 && r.drvpath === d);
      expect(r13.length, d).toBeGreaterThanOrEqual(1);
      expect(new Set(r13.map((r) => r.resolveddrvpath)).size).toBe(1);
      resolvedOf.set(d, `/nix/store/${r13[0]!.resolveddrvpath}`);
      expect(rows.filter((r) => r.drvpath === d && r.status !== 13 && r.propagatedfrom === null)).toEqual([]);
    }
    // One status-13 row per (build, original derivation).
    const keys13 = rows.filter((r) => r.status === 13).map((r) => `${r.build} ${r.drvpath}`);
    expect(new Set(keys13).size).toBe(keys13.length);
    for (const d of [drv('b'), drv('left'), drv('right'), drv('top'), drv('w'), top.c!]) {
      expect(rows.filter((r) => r.drvpath === resolvedOf.get(d) && r.status === 0), d).toHaveLength(1);
    }
    // The diamond's shared s built once; a and s built as they are (no inputs).
    expect(rows.filter((r) => r.drvpath === drv('s') && r.status === 0)).toHaveLength(1);
    expect(rows.filter((r) => r.drvpath === drv('a') && r.status === 0)).toHaveLength(1);
    // v was not built: its output came from the store's realisation; w resolved against it.
    expect(rows.filter((r) => r.drvpath === top.v)).toEqual([]);
    const outs = Object.fromEntries(
      (await fleet.db.pool.query('select b.job, o.path from builds b join buildoutputs o on o.build = b.id')).rows.map((r) => [r.job, r.path as string]),
    );
    expect(outs.v).toBe(vOut);
    expect(readFileSync(outs.w!, 'utf8')).toBe('w v\n');
    // BuildOutputs filled with the real CA paths after the resolved steps built; dependents saw them.
    expect(readFileSync(outs.c!, 'utf8')).toBe('c b a\n');
    expect(readFileSync(outs.top!, 'utf8')).toBe('left s right s\n');
    for (const j of ['c', 'left', 'right', 'top', 'w']) expect(existsSync(outs[j]!), j).toBe(true);
    const sizes = (await fleet.db.pool.query("select job, size, closuresize from builds where buildstatus = 0 and job != 'v'")).rows;
    for (const s of sizes) expect(Number(s.closuresize)).toBeGreaterThanOrEqual(Number(s.size));

    // The failure: the resolved fb ran once and failed (1); fc's build failed with it (2).
    const fbResolved = resolvedOf.get(drv('fb'))!;
    const ran = rows.filter((r) => r.drvpath === fbResolved && r.status === 1 && r.propagatedfrom === null);
    expect(ran).toHaveLength(1);

    // fb queued again (a new evaluation): resolved again to the same derivation, which failed before,
    // so nothing is built: a cached failure (status 8 row of the resolved .drv, propagated from the
    // build it failed under), buildstatus 1 (docs/CA-DERIVATIONS.md), isCachedBuild.
    const again = await submit(fleet.db.url, file, 'ca-two-again', ['fb']);
    await waitFor(async () => (await unfinished()) === 0, 60_000, 'fb queued again to finish');
    expect((await fleet.db.pool.query('select buildstatus, iscachedbuild from builds where id = $1', [again.fb])).rows).toEqual([{ buildstatus: 1, iscachedbuild: 1 }]);
    const againRows = (await steps()).filter((r) => r.build === again.fb);
    expect(againRows.map((r) => ({ drvpath: r.drvpath, status: r.status, resolved: r.resolveddrvpath, from: r.propagatedfrom })).sort((x, y) => x.status! - y.status!)).toEqual([
      { drvpath: fbResolved, status: 8, resolved: null, from: ran[0]!.build },
      { drvpath: drv('fb'), status: 13, resolved: fbResolved.slice('/nix/store/'.length), from: null },
    ]);
    expect((await steps()).filter((r) => r.drvpath === fbResolved && r.status === 1 && r.propagatedfrom === null)).toHaveLength(1);
    expect(ids.fb).toBeDefined();

    // The cache's realisations are Nix 2.8's, signed with the cache's key.
    const pk = parsePublicKey(key.publicKey);
    await waitFor(() => existsSync(join(cacheDir, 'realisations')) && readdirSync(join(cacheDir, 'realisations')).length > 0, 30_000, 'realisations');
    for (const f of readdirSync(join(cacheDir, 'realisations'))) {
      expect(f).toMatch(/^sha256:[0-9a-f]{64}![a-z]+\.doi$/);
      expect(realisationSignedBy([pk], parseRealisation(readFileSync(join(cacheDir, 'realisations', f), 'utf8')))).toBe(true);
    }

    // Nix 2.8 in a fresh store, with only the .drv files and this cache: substitutes the chain and the
    // diamond (CA outputs through their realisations) and builds nothing.
    const wanted = [top.c!, top.top!, top.left!, top.right!];
    const fresh = await PrivateStore.create(mkdtempSync(join(tmpdir(), 'hydrant-e2e-ca-two-fresh-')));
    const closure = await runNixLines('nix-store', ['-qR', ...wanted]);
    await fresh.runChecked('nix-store', ['--import'], { input: (await runNix('nix-store', ['--export', ...closure])).stdout });
    const r = await fresh.runChecked('nix-store', ['--realise', ...wanted], { extraConfig: `substituters = file://${cacheDir}\n${trusting(key.publicKey)}` });
    expect(r.stdout.toString().trim().split('\n').sort()).toEqual([outs.c, outs.top, outs.left, outs.right].sort());
    expect(r.stderr.toString()).not.toMatch(/building '/);
  }, 420_000);
});
