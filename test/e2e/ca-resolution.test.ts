import { randomBytes } from 'node:crypto';
import { existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, renameSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { joined, startBuilder, startRunner, submit, useFleet } from '../helpers/fleet.ts';
import { CA_MK_DRV, runNix, runNixLines } from '../helpers/nix.ts';
import { PrivateStore } from '../../src/nix/private-store.ts';
import { parseRealisation, realisationSignedBy } from '../../src/nix/realisation.ts';
import { parsePublicKey } from '../../src/nix/signing.ts';
import { waitFor } from '../helpers/runtime.ts';
import { generateKey, trusting } from '../cache/fixtures.ts';

/**
 * Content-addressed derivations through the scheduler, with a real runner
 * process, real builder processes (private stores) and real Nix 2.8:
 * a CA → CA → deferred input-addressed chain (c), and a second CA build (b2)
 * whose derivation differs from the chain's b but resolves to the same
 * derivation (its CA input a2 has other build instructions and the same
 * output). The resolved b waits on a gate file, so the runner is killed
 * (SIGKILL) while the status-13 rows are written and the resolved step is
 * running; a new runner on the same database and store finishes the builds.
 * Then: the same builds queued again build nothing; a failing CA derivation
 * fails its build and the one depending on it; and Nix 2.8 substitutes the
 * chain from the cache through the published realisations.
 */
function release(nonce: string, gate: string): string {
  return `{ }:
let
  ${CA_MK_DRV}
  a = mk { name = "ca-a-${nonce}"; script = "echo a > $out"; extra = ca; };
  a2 = mk { name = "ca-a-${nonce}"; script = "echo a  > $out"; extra = ca; };
  # The resolved b waits for the gate: the runner dies while it runs.
  bWith = dep: mk { name = "ca-b-${nonce}"; script = "while [ ! -e ${gate} ]; do /bin/sleep 0.1; done; read x < \${dep}; echo b $x > $out"; extra = ca; };
in {
  c = mk { name = "ia-c-${nonce}"; script = "read x < \${bWith a}; echo c $x > $out"; };
  b2 = bWith a2;
}
`;
}

interface Step {
  build: number;
  stepnr: number;
  drvpath: string;
  status: number | null;
  busy: number;
  resolveddrvpath: string | null;
}

describe('content-addressed derivations resolved by the scheduler', () => {
  const { db, dir, procs } = useFleet('ca');

  const steps = async (): Promise<Step[]> =>
    (await db.pool.query<Step>('select build, stepnr, drvpath, status, busy, resolveddrvpath from buildsteps order by build, stepnr')).rows;

  it('resolves once inputs land, builds a shared resolved derivation once, survives a SIGKILL after the status-13 rows, builds nothing twice, fails dependents of a failed resolved step, and publishes realisations Nix substitutes through', async () => {
    const nonce = randomBytes(4).toString('hex');
    const gate = join(dir, 'gate');
    const file = join(dir, 'release.nix');
    writeFileSync(file, release(nonce, gate));
    const [cDrv, b2Drv] = await runNixLines('nix-instantiate', [file, '-A', 'c', '-A', 'b2']);
    const bDrv = (await runNixLines('nix-store', ['--query', '--references', cDrv!])).find((p) => p.endsWith(`-ca-b-${nonce}.drv`))!;
    expect(bDrv).toBeDefined();

    const key = await generateKey(dir, 'ca-cache-1');
    const cacheDir = join(dir, 'cache');
    const extra = `remoteStoreAddr = ["file://${cacheDir}?compression=none&secret-key=${key.secretFile}"]\nretryInterval = 1\nretryBackoff = 1`;
    const runner1 = await startRunner(join(dir), db.url, extra);
    procs.push(runner1.proc);
    const builder1 = startBuilder(dir, `127.0.0.1:${runner1.port}`, runner1.tokenFile, 'ca-builder-1');
    procs.push(builder1);
    await joined(runner1.proc, ['ca-builder-1']);
    const ids = await submit(db.url, file, 'ca', ['c', 'b2']);
    const c = ids.c!;
    const b2 = ids.b2!;

    // Both b and b2 resolved (status 13), and the one resolved derivation running, held by the gate.
    await waitFor(async () => {
      const s = await steps();
      return s.filter((r) => r.status === 13).length === 2 && s.some((r) => r.busy !== 0 && r.drvpath.endsWith(`-ca-b-${nonce}.drv`));
    }, 120_000, 'b and b2 resolved and the resolved b building');
    const before = await steps();
    const resolvedB = before.find((r) => r.status === 13 && r.drvpath === bDrv)!;
    expect(resolvedB.build).toBe(c);
    expect(resolvedB.resolveddrvpath).toMatch(new RegExp(`^[a-z0-9]{32}-ca-b-${nonce}\\.drv$`));
    const resolvedBPath = `/nix/store/${resolvedB.resolveddrvpath}`;
    // b2 resolved to the same derivation: it is built once.
    expect(before.find((r) => r.status === 13 && r.drvpath === b2Drv)).toMatchObject({ build: b2, resolveddrvpath: resolvedB.resolveddrvpath });
    expect(before.filter((r) => r.drvpath === resolvedBPath)).toHaveLength(1);
    // The resolved .drv is in the runner's store, rooted while a step needs it.
    expect(existsSync(resolvedBPath)).toBe(true);
    expect(existsSync(join(dir, 'hydrant-resolved-roots', resolvedB.resolveddrvpath!))).toBe(true);

    // The runner dies between resolution and the resolved build's result.
    runner1.proc.child.kill('SIGKILL');
    builder1.child.kill('SIGKILL');
    await runner1.proc.exited;
    writeFileSync(gate, '');

    // A root the killed runner left for a .drv no step will need again.
    const strayRoot = join(dir, 'hydrant-resolved-roots', `${'0'.repeat(32)}-stray.drv`);
    writeFileSync(strayRoot, '');
    const runner2 = await startRunner(join(dir), db.url, extra, { token: runner1.token });
    procs.push(runner2.proc);
    expect(existsSync(strayRoot)).toBe(false);
    const builder2 = startBuilder(dir, `127.0.0.1:${runner2.port}`, runner2.tokenFile, 'ca-builder-2');
    procs.push(builder2);
    await waitFor(async () => (await db.pool.query('select count(*)::int n from builds where finished = 0')).rows[0].n === 0, 120_000, 'builds to finish');

    const builds = (await db.pool.query('select id, buildstatus, size, closuresize from builds order by id')).rows;
    expect(builds.map((b) => b.buildstatus)).toEqual([0, 0]);
    for (const b of builds) {
      expect(Number(b.size)).toBeGreaterThan(0);
      expect(Number(b.closuresize)).toBeGreaterThanOrEqual(Number(b.size));
    }
    const after = await steps();
    expect(after.filter((r) => r.busy !== 0)).toEqual([]);
    // Exactly one status-13 row per (build, original derivation), none added by the restart.
    const resolvedRows = after.filter((r) => r.status === 13);
    expect(resolvedRows.map((r) => `${r.build} ${r.drvpath}`).sort()).toEqual([`${c} ${bDrv}`, `${b2} ${b2Drv}`, `${c} ${cDrv}`].sort());
    for (const r of resolvedRows) expect(r.resolveddrvpath).not.toBeNull();
    // The resolved b built once (the first attempt was aborted by the crash), the resolved c once.
    expect(after.filter((r) => r.drvpath === resolvedBPath && r.status === 0)).toHaveLength(1);
    const resolvedC = `/nix/store/${resolvedRows.find((r) => r.drvpath === cDrv)!.resolveddrvpath}`;
    expect(after.filter((r) => r.drvpath === resolvedC && r.status === 0)).toHaveLength(1);
    // No original derivation of b, b2 or c was built as it is.
    expect(after.filter((r) => [bDrv, b2Drv, cDrv].includes(r.drvpath) && r.status !== 13)).toEqual([]);

    // BuildOutputs filled from the resolved steps' results: b2's CA output and c's output.
    const outs = (await db.pool.query('select build, name, path from buildoutputs order by build')).rows;
    expect(outs).toHaveLength(2);
    for (const o of outs) {
      expect(o.path).toMatch(/^\/nix\/store\//);
      expect(existsSync(o.path)).toBe(true);
    }
    const bOut = outs.find((o) => o.build === b2)!.path as string;
    expect(bOut).toMatch(new RegExp(`-ca-b-${nonce}$`));
    const cOut = outs.find((o) => o.build === c)!.path as string;
    // c's output holds the real path of b (dependents received it).
    expect(readFileSync(cOut, 'utf8')).toBe(`c b a\n`);
    // Roots of resolved .drv files go once no step needs them.
    await waitFor(async () => !existsSync(join(dir, 'hydrant-resolved-roots', resolvedB.resolveddrvpath!)), 10_000, 'the resolved b root to go');

    // Queued again (a new evaluation): nothing is built; the builds end cached with the same outputs,
    // each with its own status-13 rows.
    const succeededRows = after.filter((r) => r.status === 0).length;
    const again = await submit(db.url, file, 'ca-again', ['c', 'b2']);
    await waitFor(async () => (await db.pool.query('select count(*)::int n from builds where finished = 0')).rows[0].n === 0, 60_000, 'the builds queued again to finish');
    const againRows = (await db.pool.query('select b.id, b.buildstatus, b.iscachedbuild, o.path from builds b join buildoutputs o on o.build = b.id where b.id = any($1) order by b.id', [[again.c, again.b2]])).rows;
    expect(againRows).toEqual([
      { id: again.c, buildstatus: 0, iscachedbuild: 1, path: cOut },
      { id: again.b2, buildstatus: 0, iscachedbuild: 1, path: bOut },
    ]);
    const third = await steps();
    expect(third.filter((r) => r.status === 0)).toHaveLength(succeededRows);
    expect(third.filter((r) => r.status === 13 && [again.c, again.b2].includes(r.build)).map((r) => `${r.build} ${r.drvpath}`).sort()).toEqual([`${again.c} ${bDrv}`, `${again.c} ${cDrv}`, `${again.b2} ${b2Drv}`].sort());

    // A resolved CA derivation that fails: its build fails (1), the build that needs it fails with it (2).
    const failing = join(dir, 'failing.nix');
    writeFileSync(
      failing,
      `{ }: let
        ${CA_MK_DRV}
        fa = mk { name = "fail-a-${nonce}"; script = "echo fa > $out"; extra = ca; };
        fb = mk { name = "fail-b-${nonce}"; script = "read x < \${fa}; echo failing on $x; exit 1"; extra = ca; };
      in { inherit fb; fc = mk { name = "fail-c-${nonce}"; script = "read x < \${fb}; echo $x > $out"; }; }`,
    );
    const failIds = await submit(db.url, failing, 'ca-fail', ['fb', 'fc']);
    await waitFor(async () => (await db.pool.query('select count(*)::int n from builds where finished = 0')).rows[0].n === 0, 60_000, 'the failing builds to finish');
    const failedBuilds = (await db.pool.query('select id, buildstatus from builds where id = any($1) order by id', [[failIds.fb, failIds.fc]])).rows;
    expect(failedBuilds).toEqual([{ id: failIds.fb, buildstatus: 1 }, { id: failIds.fc, buildstatus: 2 }].sort((x, y) => x.id! - y.id!));
    const failSteps = (await steps()).filter((r) => r.drvpath.includes(`-fail-b-${nonce}`));
    // The original was resolved (13) and the resolved derivation is the step that failed (1), built once.
    expect(failSteps.filter((r) => r.status === 13)).toHaveLength(1);
    const resolvedFb = `/nix/store/${failSteps.find((r) => r.status === 13)!.resolveddrvpath}`;
    const ranFb = (await db.pool.query('select build from buildsteps where drvpath = $1 and status = 1 and propagatedfrom is null', [resolvedFb])).rows;
    expect(ranFb).toHaveLength(1);
    // Under the other build, the failure is propagated from the one it ran under (as Hydra records it).
    const propagated = (await db.pool.query('select build, propagatedfrom from buildsteps where drvpath = $1 and propagatedfrom is not null', [resolvedFb])).rows;
    for (const r of propagated) expect(r.propagatedfrom).toBe(ranFb[0].build);
    expect((await steps()).filter((r) => r.busy !== 0)).toEqual([]);

    // The cache holds signed Nix 2.8 realisations for the original and the resolved derivations.
    const dois = readdirSync(join(cacheDir, 'realisations')).map((f) => parseRealisation(readFileSync(join(cacheDir, 'realisations', f), 'utf8')));
    const pk = parsePublicKey(key.publicKey);
    for (const r of dois) expect(realisationSignedBy([pk], r)).toBe(true);
    expect(dois.filter((r) => `/nix/store/${r.outPath}` === bOut).length).toBeGreaterThanOrEqual(3); // b, b2 and the resolved b

    // Real Nix, in a fresh store with only the .drv files and this cache, substitutes everything and builds nothing.
    const fresh = await PrivateStore.create(mkdtempSync(join(tmpdir(), 'hydrant-e2e-ca-fresh-')));
    const closure = await runNixLines('nix-store', ['-qR', cDrv!, b2Drv!]);
    await fresh.runChecked('nix-store', ['--import'], { input: (await runNix('nix-store', ['--export', ...closure])).stdout });
    const r = await fresh.runChecked('nix-store', ['--realise', cDrv!, b2Drv!], { extraConfig: `substituters = file://${cacheDir}\n${trusting(key.publicKey)}` });
    expect(r.stdout.toString().trim().split('\n').sort()).toEqual([cOut, bOut].sort());
    expect(r.stderr.toString()).not.toMatch(/building '/);
    // Without the realisations the same Nix builds the CA derivations: the .doi files are what it used.
    renameSync(join(cacheDir, 'realisations'), join(cacheDir, 'realisations.off'));
    mkdirSync(join(cacheDir, 'realisations'));
    const control = await PrivateStore.create(mkdtempSync(join(tmpdir(), 'hydrant-e2e-ca-control-')));
    await control.runChecked('nix-store', ['--import'], { input: (await runNix('nix-store', ['--export', ...closure])).stdout });
    const built = await control.runChecked('nix-store', ['--realise', b2Drv!], { extraConfig: `substituters = file://${cacheDir}\n${trusting(key.publicKey)}` });
    expect(built.stderr.toString()).toMatch(/building '/);
  }, 300_000);
});
