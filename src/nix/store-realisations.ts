import { NixCommandError } from '../errors/index.ts';
import type { NixStoreHandle } from './private-store.ts';
import { STORE_DIR } from './store-path.ts';

/** A realised output of a content-addressed derivation, as a store's realisations record it. */
export interface StoreRealisation {
  readonly name: string;
  readonly path: string;
}

/** Nix's answer when an output of the derivation has no realisation in the store. */
const UNBUILT = /cannot operate on an output of unbuilt content-addressed derivation/;
const BASE_NAME = /^[0-9a-df-np-sv-z]{32}-[A-Za-z0-9+\-._?=]+$/;

/**
 * The realisations `store` holds for the outputs of the content-addressed
 * derivation `drvPath`, through Nix 2.8's `nix realisation info --json`
 * (e.g. an output built or substituted outside Hydra, of which no build step
 * recorded the path). Empty when one of its outputs has none: Nix answers
 * for all the outputs or fails. `--offline`: the local store only, no
 * substituter is asked. Throws NixCommandError for any other failure.
 */
export async function storeRealisations(store: NixStoreHandle, drvPath: string): Promise<StoreRealisation[]> {
  const args = ['realisation', 'info', '--json', '--offline', '--extra-experimental-features', 'nix-command ca-derivations', drvPath];
  const r = await store.run('nix', args);
  if (r.exitCode !== 0) {
    if (UNBUILT.test(r.stderr)) return [];
    throw new NixCommandError(['nix', ...args], r.exitCode, r.stderr);
  }
  const list = JSON.parse(r.stdout.toString('utf8')) as { id?: unknown; outPath?: unknown }[];
  const found: StoreRealisation[] = [];
  for (const x of list) {
    // The id is `sha256:<hash modulo>!<output name>`; outPath a base name.
    const id = typeof x.id === 'string' ? x.id : '';
    const bang = id.lastIndexOf('!');
    if (bang < 0 || typeof x.outPath !== 'string' || !BASE_NAME.test(x.outPath)) {
      throw new NixCommandError(['nix', ...args], 0, `unexpected realisation ${JSON.stringify(x)}`);
    }
    found.push({ name: id.slice(bang + 1), path: `${STORE_DIR}/${x.outPath}` });
  }
  return found;
}
