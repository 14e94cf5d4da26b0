import { createHash, randomBytes } from 'node:crypto';
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import { execFileSync } from 'node:child_process';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { PrivateStore } from '../../src/nix/private-store.ts';
import { runCli, startCli } from '../helpers/cli.ts';
import { useFleet } from '../helpers/fleet.ts';
import { MK_DRV, runNix } from '../helpers/nix.ts';
import { waitFor } from '../helpers/runtime.ts';
import { copyFromCache, failureOf, generateKey } from '../cache/fixtures.ts';

const bunzip2 = (data: Buffer): Buffer => execFileSync('bzip2', ['-dc'], { input: data });

/** A DAG with a shared base, a fan-out, a failure and nix-support products. */
function release(nonce: string): string {
  return `{ }: let ${MK_DRV}
    # About 400 KB of text: large enough to travel zstd-compressed both ways.
    base = mk { name = "base-${nonce}"; script = "echo base > $out; i=0; while [ $i -lt 8000 ]; do echo line $i of the shared base, repeated to be compressible >> $out; i=$((i+1)); done"; };
    left = mk { name = "left-${nonce}"; script = "/bin/cat \${base} > $out; echo left >> $out"; };
    right = mk { name = "right-${nonce}"; script = "/bin/mkdir $out $doc; /bin/cat \${base} > $out/r; echo doc > $doc/d"; extra = { outputs = [ "out" "doc" ]; }; };
  in {
    top = mk { name = "top-${nonce}"; script = "/bin/cat \${left} \${right}/r \${right.doc}/d > $out"; };
    inherit left right;
    broken = mk { name = "broken-${nonce}"; script = "echo about to fail; exit 1"; };
    needsBroken = mk { name = "needs-broken-${nonce}"; script = "/bin/cat \${mk { name = "broken2-${nonce}"; script = "exit 2"; }} > $out"; };
    products = mk { name = "products-${nonce}"; script = ''
      /bin/mkdir -p $out/nix-support $out/dist
      echo tarball > $out/dist/app.tar
      echo "file source-dist $out/dist/app.tar" > $out/nix-support/hydra-build-products
      echo "app-1.0" > $out/nix-support/hydra-release-name
    ''; };
    withFailed = mk { name = "with-failed-${nonce}"; script = "/bin/mkdir -p $out/nix-support; /bin/touch $out/nix-support/failed"; };
  }`;
}

describe('runner and two builder processes over gRPC, each with its own store', () => {
  const { db, dir, procs } = useFleet('builders');

  it('builds a DAG on remote builders: requisites and outputs travel, rows are right', async () => {
    const nonce = randomBytes(4).toString('hex');
    const token = join(dir, 'token');
    writeFileSync(token, randomBytes(24).toString('hex'));
    const config = join(dir, 'runner.toml');
    const key = await generateKey(dir, 'e2e-cache-1');
    const other = await generateKey(dir, 'someone-else-1');
    const cacheDir = join(dir, 'cache');
    const rootsDir = join(dir, 'roots');
    writeFileSync(
      config,
      `dbUrl = "${db.url}"\nhydraDataDir = "${dir}"\ntokenPaths = ["${token}"]\ngrpcListen = "127.0.0.1:0"\nhttpListen = "127.0.0.1:0"\nshutdownGraceInS = 2\n` +
        `remoteStoreAddr = ["file://${cacheDir}?compression=zstd&secret-key=${key.secretFile}"]\nrootsDir = "${rootsDir}"\n`,
    );
    const file = join(dir, 'release.nix');
    writeFileSync(file, release(nonce));

    const runner = startCli(['serve', '--config', config]);
    procs.push(runner);
    const httpPort = /"port":(\d+),"writes":\w+,"msg":"HTTP API listening"/.exec(await runner.waitFor(/"port":\d+,"writes":\w+,"msg":"HTTP API listening"/))![1];
    const listening = await runner.waitFor(/"port":(\d+),"msg":"builder protocol listening"/);
    const port = /"port":(\d+)/.exec(listening)![1];

    // A builder without the token is refused and never joins.
    const badToken = join(dir, 'bad-token');
    writeFileSync(badToken, 'wrong');
    const bad = startCli(['builder', '--server', `127.0.0.1:${port}`, '--token-file', badToken, '--store-dir', join(dir, 'bad'), '--machine-id', 'intruder']);
    procs.push(bad);
    await bad.waitFor(/UNAUTHENTICATED|missing or invalid bearer token/i, 20_000);

    for (const id of ['b1', 'b2']) {
      const b = startCli(['builder', '--server', `127.0.0.1:${port}`, '--token-file', token, '--store-dir', join(dir, id), '--machine-id', id]);
      procs.push(b);
    }
    await runner.waitFor(/"machine":"b1".*"msg":"builder joined"|"msg":"builder joined".*"machine":"b1"/, 30_000);
    await runner.waitFor(/"machine":"b2"/, 30_000);
    expect(runner.output()).not.toMatch(/"machine":"intruder"/);

    const submitted = await runCli(['submit', '--db-url', db.url, '--project', 'e2e', '--jobset', 'main', '--create', '--file', file]);
    expect(submitted.code).toBe(0);
    await waitFor(async () => (await db.pool.query('select count(*)::int n from builds where finished = 0')).rows[0].n === 0, 120_000, 'builds to finish');

    const builds = Object.fromEntries((await db.pool.query('select job, buildstatus from builds')).rows.map((r) => [r.job, r.buildstatus]));
    // nix-support/failed read in the builder's store: failed with output (6), its output still kept.
    expect(builds).toEqual({ top: 0, left: 0, right: 0, broken: 1, needsBroken: 2, products: 0, withFailed: 6 });
    const withFailedOut = (await db.pool.query("select o.path from buildoutputs o join builds b on b.id = o.build where b.job = 'withFailed'")).rows[0].path as string;
    expect((await runNix('nix-store', ['--check-validity', withFailedOut])).stdout.toString()).toBe('');
    const steps = (await db.pool.query('select drvpath, status, machine, busy from buildsteps where status = 0')).rows;
    expect(new Set(steps.map((s) => s.machine)).size).toBeGreaterThanOrEqual(1);
    for (const s of steps) expect(['b1', 'b2']).toContain(s.machine);
    expect((await db.pool.query('select count(*)::int n from buildsteps where busy != 0')).rows[0].n).toBe(0);

    // Outputs came back into the runner's store, with the NAR hash the builder reported.
    const outs = (await db.pool.query("select o.path from buildoutputs o join builds b on b.id = o.build where b.buildstatus = 0")).rows.map((r) => r.path as string);
    expect(outs.length).toBe(5);
    // nix-support read in the builder's private store: products name the path as the build saw it.
    const products = (await db.pool.query("select p.type, p.subtype, p.path, p.name, p.filesize, p.sha256hash, b.releasename from buildproducts p join builds b on b.id = p.build where b.job = 'products'")).rows;
    expect(products).toEqual([
      { type: 'file', subtype: 'source-dist', path: expect.stringMatching(/^\/nix\/store\/[a-z0-9]{32}-products-[0-9a-f]+\/dist\/app\.tar$/), name: 'app.tar', filesize: 8, sha256hash: createHash('sha256').update('tarball\n').digest('hex'), releasename: 'app-1.0' },
    ]);
    const { stdout } = await runNix('nix-store', ['--check-validity', '--print-invalid', ...outs]);
    expect(stdout.toString()).toBe('');
    // Requisites travelled runner → builder: the builder that built `top` has base's output in its own store.
    const topDrv = (await db.pool.query("select drvpath from builds where job = 'top'")).rows[0].drvpath as string;
    const topMachine = (await db.pool.query('select machine from buildsteps where drvpath = $1 and status = 0', [topDrv])).rows[0].machine as string;
    const store = await PrivateStore.create(join(dir, topMachine));
    const leftOut = (await db.pool.query("select path from buildoutputs o join builds b on b.id = o.build where b.job = 'left'")).rows[0].path as string;
    expect((await store.run('nix-store', ['--check-validity', leftOut])).exitCode).toBe(0);
    // Orders come resolved, as Hydra sends them: the builder needs no .drv file.
    expect((await store.run('nix-store', ['--check-validity', topDrv])).exitCode).not.toBe(0);
    const deriver = (await runNix('nix-store', ['--query', '--deriver', (await db.pool.query("select path from buildoutputs o join builds b on b.id = o.build where b.job = 'top'")).rows[0].path])).stdout;
    expect(deriver.toString().trim()).toBe(topDrv);
    // The log of the failure streamed back, and was compressed where Hydra's web interface reads it.
    const brokenDrv = (await db.pool.query("select drvpath from builds where job = 'broken'")).rows[0].drvpath as string;
    const base = brokenDrv.split('/').pop()!;
    const logFile = join(dir, 'build-logs', base.slice(0, 2), base.slice(2));
    expect(existsSync(logFile)).toBe(false);
    expect(bunzip2(readFileSync(`${logFile}.bz2`)).toString('utf8')).toContain('about to fail');
    expect(readFileSync(join(cacheDir, 'log', base), 'utf8')).toContain('about to fail');

    // Every output is a GC root, and is in the signed cache with its closure:
    // real Nix copies them into another store trusting only the cache's key, and refuses them without it.
    for (const o of outs) expect(existsSync(join(rootsDir, o.split('/').pop()!))).toBe(true);
    for (const o of outs) expect(readFileSync(join(cacheDir, `${o.slice(11, 43)}.narinfo`), 'utf8')).toMatch(/^Sig: e2e-cache-1:/m);
    const refused = await failureOf(copyFromCache(cacheDir, join(dir, 'untrusting'), outs, other.publicKey));
    expect(refused.message).toMatch(/signature/);
    await copyFromCache(cacheDir, join(dir, 'elsewhere'), outs, key.publicKey);
    const copied = await runNix('nix-store', ['--store', join(dir, 'elsewhere'), '--check-validity', '--print-invalid', ...outs]);
    expect(copied.stdout.toString()).toBe('');

    // Large NARs travelled zstd-compressed: base up to the runner, and down to the builder of whichever of left/right the other one built.
    const metrics = await (await fetch(`http://127.0.0.1:${httpPort}/metrics`)).text();
    const bytes = (direction: string, kind: string) => Number(new RegExp(`^hydrant_transfer_bytes_total\\{direction="${direction}",kind="${kind}"\\} (\\d+)$`, 'm').exec(metrics)![1]);
    expect(bytes('received', 'nar')).toBeGreaterThan(400_000);
    expect(bytes('received', 'wire')).toBeLessThan(bytes('received', 'nar') / 4);

    runner.child.kill('SIGTERM');
    expect(await runner.exited).toBe(0);
  }, 240_000);
});
