import { randomBytes } from 'node:crypto';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { NixCommandError } from '../../src/errors/index.ts';
import { PrivateStore } from '../../src/nix/private-store.ts';
import { storeRealisations } from '../../src/nix/store-realisations.ts';

const CA_CONFIG = { extraConfig: 'experimental-features = nix-command ca-derivations' };

describe('realisations of a store (nix realisation info, real Nix 2.8)', () => {
  it('finds the outputs of a CA derivation built in the store, none before it is built, and fails on a path that is not a derivation', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'hydrant-store-realisations-'));
    const store = await PrivateStore.create(join(dir, 'store'));
    const file = join(dir, 'ca.nix');
    const nonce = randomBytes(4).toString('hex');
    writeFileSync(
      file,
      `derivation { name = "sr-${nonce}"; system = builtins.currentSystem; builder = "/bin/sh"; outputs = [ "out" "dev" ];
        args = [ "-c" "echo out > $out; echo dev > $dev" ]; __contentAddressed = true; outputHashMode = "recursive"; outputHashAlgo = "sha256"; }`,
    );
    const drv = (await store.runChecked('nix-instantiate', [file], CA_CONFIG)).stdout.toString().trim();
    expect(await storeRealisations(store, drv)).toEqual([]);
    const built = (await store.runChecked('nix-store', ['--realise', drv], CA_CONFIG)).stdout.toString().trim().split('\n').sort();
    const found = await storeRealisations(store, drv);
    expect(found.map((r) => r.name).sort()).toEqual(['dev', 'out']);
    expect(found.map((r) => r.path).sort()).toEqual(built);
    expect(found.find((r) => r.name === 'dev')!.path).toMatch(new RegExp(`-sr-${nonce}-dev$`));
    await expect(storeRealisations(store, join(dir, 'not-in-the-store.drv'))).rejects.toBeInstanceOf(NixCommandError);
  }, 120_000);
});
