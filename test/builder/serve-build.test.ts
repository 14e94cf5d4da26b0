import { randomBytes, randomInt } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { hostStore } from '../../src/nix/private-store.ts';
import { ServeBuilds } from '../../src/builder/serve-build.ts';
import { basicDerivation } from '../../src/nix/basic-derivation.ts';
import { fromResolved, toResolved } from '../../src/protocol/resolved-derivation.ts';
import { parseDerivation } from '../../src/nix/derivation.ts';
import { processesWithArg } from '../helpers/fleet.ts';
import { instantiate, MK_DRV, realise, runNix } from '../helpers/nix.ts';
import { waitFor } from '../helpers/runtime.ts';

const NO_LIMITS = { maxSilentTime: 0, buildTimeout: 0, maxLogSize: Number.POSITIVE_INFINITY };

async function basic(drvPath: string) {
  const drv = await basicDerivation(hostStore, parseDerivation(readFileSync(drvPath, 'utf8')));
  if (!drv) throw new Error(`${drvPath} has no basic form`);
  return drv;
}

/** BuildDerivation over `nix-store --serve --write` against the host store and real builds. */
describe('builds over serve sessions', () => {
  it('build what nix-store --realise builds, stream the log, and report failures and limits as Nix does', async () => {
    const nonce = randomBytes(4).toString('hex');
    const [dep, top, failing, silent] = await instantiate(`let ${MK_DRV}
      dep = mk { name = "sb-dep-${nonce}"; script = "echo dep > $out"; };
    in [
      dep
      (mk { name = "sb-top-${nonce}"; script = "echo building top; /bin/cat \${dep} > $out; echo doc > $doc"; extra = { outputs = [ "out" "doc" ]; }; })
      (mk { name = "sb-fail-${nonce}"; script = "echo about to fail; exit 3"; })
      (mk { name = "sb-silent-${nonce}"; script = "echo quiet; /bin/sleep 30; echo late > $out"; })
    ]`);
    // The basic form names the input derivation's output instead of the .drv.
    const [depOut] = await realise([dep!]);
    const topBasic = await basic(top!);
    expect(topBasic.inputDrvs.size).toBe(0);
    expect(topBasic.inputSrcs).toContain(depOut);
    // As a build order carries it.
    expect(fromResolved(toResolved(topBasic))).toEqual(topBasic);

    const builds = new ServeBuilds(hostStore, 2);
    const log: Buffer[] = [];
    const built = await builds.run(top!, topBasic, NO_LIMITS, (c) => log.push(c)).done;
    expect(built.kind).toBe('built');
    expect(Buffer.concat(log).toString()).toContain('building top');
    // The same outputs nix-store --realise names, valid with the content the builder wrote.
    const outs = [...topBasic.outputs.values()].map((o) => o.path).sort();
    expect(built.kind === 'built' && [...built.outputs.keys()].sort()).toEqual(outs);
    expect((await realise([top!])).sort()).toEqual(outs);
    expect(readFileSync(topBasic.outputs.get('out')!.path, 'utf8')).toBe('dep\n');
    expect((await runNix('nix-store', ['--query', '--deriver', topBasic.outputs.get('out')!.path])).stdout.toString().trim()).toBe(top);

    // Built again: already valid, still a success.
    expect((await builds.run(top!, topBasic, NO_LIMITS, () => {}).done).kind).toBe('built');

    const failLog: Buffer[] = [];
    const failed = await builds.run(failing!, await basic(failing!), NO_LIMITS, (c) => failLog.push(c)).done;
    expect(failed).toMatchObject({ kind: 'failed', status: 1 });
    expect(failed.kind === 'failed' && failed.errorMsg).toMatch(/builder for '.*sb-fail.*' failed with exit code 3/);
    expect(failed.kind === 'failed' && failed.errorMsg).not.toContain('\x1b');
    expect(Buffer.concat(failLog).toString()).toContain('about to fail');

    const silentBasic = await basic(silent!);
    const timedOut = await builds.run(silent!, silentBasic, { ...NO_LIMITS, maxSilentTime: 1 }, () => {}).done;
    expect(timedOut).toMatchObject({ kind: 'failed', status: 7 });
    expect(timedOut.kind === 'failed' && timedOut.errorMsg).toMatch(/timed out after 1 seconds of silence/);
  });

  it('stop kills the build with its processes, and the sessions stay usable', async () => {
    const nonce = randomBytes(4).toString('hex');
    const sleep = `60.${String(randomInt(1, 1_000_000)).padStart(6, '0')}1`;
    const [slow, quick] = await instantiate(`let ${MK_DRV} in [
      (mk { name = "sb-slow-${nonce}"; script = "echo started; /bin/sleep ${sleep}; echo late > $out"; })
      (mk { name = "sb-quick-${nonce}"; script = "echo quick > $out"; })
    ]`);
    const builds = new ServeBuilds(hostStore, 1);
    const log: Buffer[] = [];
    const h = builds.run(slow!, await basic(slow!), NO_LIMITS, (c) => log.push(c));
    await waitFor(() => processesWithArg(sleep).length > 0, 20_000);
    h.kill();
    const r = await h.done;
    expect(r.kind).toBe('error');
    await waitFor(() => processesWithArg(sleep).length === 0, 10_000);
    expect(Buffer.concat(log).toString()).toContain('started');
    // The stopped session is replaced: the only slot builds the next derivation.
    expect((await builds.run(quick!, await basic(quick!), NO_LIMITS, () => {}).done).kind).toBe('built');
    // A build stopped before it had a session never starts.
    const early = builds.run(slow!, await basic(slow!), NO_LIMITS, () => {});
    early.kill();
    expect((await early.done).kind).toBe('error');
    expect(processesWithArg(sleep)).toEqual([]);
  });
});
