import { readFile } from 'node:fs/promises';
import { beforeAll, describe, expect, it } from 'vitest';
import { NixFormatError } from '../../src/errors/index.ts';
import {
  DerivationHasher,
  derivationStorePath,
  downstreamPlaceholder,
  fixedOutputPath,
  hashPlaceholder,
} from '../../src/nix/derivation-paths.ts';
import { type Derivation, derivationName, parseDerivation } from '../../src/nix/derivation.ts';
import { instantiate, MK_DRV } from '../helpers/nix.ts';
import { type DrvAttr, type DrvFixtures, instantiateDrvFixtures } from './fixtures.ts';

let fx: DrvFixtures;
const get = (a: DrvAttr) => fx.drvs.get(fx.drvPath.get(a)!)!.drv;
const readFromDisk = async (p: string) => parseDerivation(await readFile(p));

beforeAll(async () => {
  fx = await instantiateDrvFixtures();
});

describe('output paths of real derivations (hashDerivationModulo)', () => {
  it('recomputes every output path nix-instantiate wrote, reading inputs from disk', async () => {
    const hasher = new DerivationHasher(readFromDisk);
    let inputAddressed = 0;
    for (const [p, { drv }] of fx.drvs) {
      const computed = await hasher.outputPaths(drv, derivationName(drv, p));
      for (const [name, o] of drv.outputs) {
        expect(computed.get(name), `${p}!${name}`).toBe(o.path === '' ? null : o.path);
        if (o.path !== '' && o.hashAlgo === '') inputAddressed++;
      }
    }
    expect(inputAddressed).toBeGreaterThan(5);
  });

  it('depends on fixed-output inputs only through their content hash, like Nix', async () => {
    const expr = (script: string) => `let ${MK_DRV}
      fetch = mk { name = "dp-fetched"; script = "${script}"; extra = {
        outputHashMode = "flat"; outputHashAlgo = "sha256"; outputHash = builtins.hashString "sha256" "data"; }; };
      in mk { name = "dp-user"; script = "/bin/cat \${fetch} > $out"; deps = [ fetch ]; }`;
    const [a] = await instantiate(expr('printf data > $out'));
    const [b] = await instantiate(expr('printf %s data > $out'));
    expect(a).not.toBe(b);
    const [da, db] = await Promise.all([readFromDisk(a!), readFromDisk(b!)]);
    // Nix gave both users the same output path although their .drv files differ…
    expect(da.outputs.get('out')!.path).toBe(db.outputs.get('out')!.path);
    // …and so do we.
    const hasher = new DerivationHasher(readFromDisk);
    expect((await hasher.outputPaths(db, 'dp-user')).get('out')).toBe(da.outputs.get('out')!.path);
  });

  it('reports deferred derivations as such', async () => {
    const hasher = new DerivationHasher(readFromDisk);
    for (const a of ['structuredDeferred', 'deferred', 'caOut'] as const) {
      const h = await hasher.hash(get(a), derivationName(get(a), fx.drvPath.get(a)), true);
      expect(h.kind).toBe('deferred');
    }
    expect((await hasher.hash(get('top'), 'dt-top', true)).kind).toBe('regular');
  });

  it('computes fixed output paths from the expected hash', () => {
    for (const a of ['fodFlat', 'fodRec', 'fodSha1', 'fodSha512'] as const) {
      const name = derivationName(get(a), fx.drvPath.get(a));
      expect(fixedOutputPath(get(a), name, 'out')).toBe(get(a).outputs.get('out')!.path);
    }
  });

  it('reads each input .drv once', async () => {
    const reads: string[] = [];
    const hasher = new DerivationHasher((p) => {
      reads.push(p);
      return readFromDisk(p);
    });
    await hasher.outputPaths(get('top'), 'dt-top');
    await hasher.outputPaths(get('top'), 'dt-top');
    expect(new Set(reads).size).toBe(reads.length);
    expect(reads.length).toBeGreaterThan(3);
  });

  it('fails clearly when an input lacks the wanted output', async () => {
    const top = get('top');
    const broken: Derivation = { ...top, inputDrvs: new Map([[fx.drvPath.get('multi')!, ['nope']]]) };
    await expect(new DerivationHasher(readFromDisk).outputPaths(broken, 'dt-top')).rejects.toThrow(NixFormatError);
  });
});

describe('the .drv path itself', () => {
  it('is the text path over the ATerm with inputs as references', () => {
    for (const [p, { drv }] of fx.drvs) expect(derivationStorePath(drv, derivationName(drv, p))).toBe(p);
  });
});

describe('placeholders nix-instantiate writes for unknown paths', () => {
  it('uses hashPlaceholder for a floating output in its own env', () => {
    expect(get('caOut').env.get('out')).toBe(hashPlaceholder('out'));
    expect(get('caOnCa').env.get('lib')).toBe(hashPlaceholder('lib'));
    expect(get('caOnCa').env.get('out')).toBe(hashPlaceholder('out'));
  });

  it('uses downstreamPlaceholder for floating outputs of inputs', () => {
    const caOut = downstreamPlaceholder(fx.drvPath.get('caOut')!, 'out');
    expect(get('caOnCa').args.join(' ')).toContain(caOut);
    const lib = downstreamPlaceholder(fx.drvPath.get('caOnCa')!, 'lib');
    expect(get('deferred').args.join(' ')).toContain(lib);
    const json = get('structuredDeferred').env.get('__json')!;
    expect(json).toContain(caOut);
  });
});
