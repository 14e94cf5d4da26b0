import { randomBytes } from 'node:crypto';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { runCli, startCli } from '../helpers/cli.ts';
import { useFleet } from '../helpers/fleet.ts';
import { MK_DRV, runNix } from '../helpers/nix.ts';
import { waitFor } from '../helpers/runtime.ts';

/**
 * A three-output derivation whose outputs refer to each other against the
 * order of their names (`bin` and `dev` both refer to `out`, and `bin` sorts
 * first): the builder must upload `out` first, since the runner imports each
 * output as it arrives. The build's closuresize is the outputs' joint
 * closure, `out` counted once.
 */
function release(nonce: string): string {
  return `{ }: let ${MK_DRV}
    dep = mk { name = "dep-${nonce}"; script = "echo a dependency of every output, ${nonce} > $out"; };
  in {
    multi = mk {
      name = "multi-${nonce}";
      script = "echo out \${dep} > $out; echo bin $out > $bin; echo dev $out $bin > $dev";
      extra = { outputs = [ "bin" "dev" "out" ]; };
    };
  }`;
}

describe("a multi-output build's sizes, built on a gRPC builder", () => {
  const { db, dir, procs } = useFleet('closure-size');

  it('uploads outputs references first, and records the joint closure as closuresize (≥ size)', async () => {
    const nonce = randomBytes(4).toString('hex');
    const token = join(dir, 'token');
    writeFileSync(token, randomBytes(24).toString('hex'));
    const config = join(dir, 'runner.toml');
    writeFileSync(config, `dbUrl = "${db.url}"\nhydraDataDir = "${dir}"\ntokenPaths = ["${token}"]\ngrpcListen = "127.0.0.1:0"\nhttpListen = "127.0.0.1:0"\nshutdownGraceInS = 2\n`);
    const file = join(dir, 'release.nix');
    writeFileSync(file, release(nonce));

    const runner = startCli(['serve', '--config', config]);
    procs.push(runner);
    const port = /"port":(\d+)/.exec(await runner.waitFor(/"port":(\d+),"msg":"builder protocol listening"/))![1];
    const builder = startCli(['builder', '--server', `127.0.0.1:${port}`, '--token-file', token, '--store-dir', join(dir, 'b1'), '--machine-id', 'b1']);
    procs.push(builder);
    await runner.waitFor(/"msg":"builder joined"/, 30_000);

    const submitted = await runCli(['submit', '--db-url', db.url, '--project', 'sizes', '--jobset', 'main', '--create', '--file', file]);
    expect(submitted.code, submitted.stderr).toBe(0);
    await waitFor(async () => (await db.pool.query('select count(*)::int n from builds where finished = 0')).rows[0].n === 0, 120_000, 'builds to finish');

    const b = (await db.pool.query("select id, buildstatus, size::float8 as size, closuresize::float8 as closuresize from builds where job = 'multi'")).rows[0];
    // Uploaded in name order, `bin` (which refers to `out`) could not be imported: the step would never succeed.
    expect(b.buildstatus).toBe(0);
    const outs = new Map<string, string>((await db.pool.query('select name, path from buildoutputs where build = $1', [b.id])).rows.map((r) => [r.name, r.path]));
    expect([...outs.keys()].sort()).toEqual(['bin', 'dev', 'out']);

    // What Nix says of the outputs in the runner's store.
    const info = async (args: string[]) => JSON.parse((await runNix('nix', ['path-info', '--json', ...args])).stdout.toString()) as { path: string; narSize: number; closureSize?: number }[];
    const own = await info([...outs.values()]);
    const joint = await info(['--recursive', ...outs.values()]);
    const perOutput = await info(['--closure-size', ...outs.values()]);
    const size = own.reduce((n, i) => n + i.narSize, 0);
    const jointSize = joint.reduce((n, i) => n + i.narSize, 0);
    const summed = perOutput.reduce((n, i) => n + i.closureSize!, 0);
    expect(b.size).toBe(size);
    expect(b.closuresize).toBe(jointSize);
    expect(b.closuresize).toBeGreaterThanOrEqual(b.size);
    // `out` and `dep` are reached from all three outputs: counted once, not three times.
    expect(b.closuresize).toBeLessThan(summed);

    runner.child.kill('SIGTERM');
    expect(await runner.exited).toBe(0);
  }, 180_000);
});
