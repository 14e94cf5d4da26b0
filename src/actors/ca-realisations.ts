import { DerivationHasher } from '../nix/derivation-paths.ts';
import { type Derivation, derivationName, derivationType } from '../nix/derivation.ts';
import { dependentRealisations, type Realisation, realisationIds } from '../nix/realisation.ts';
import { realisedKey } from '../nix/resolve-derivation.ts';
import { storePathBaseName } from '../nix/store-path.ts';

/** Reads a .drv (parsed) and an output's references from the runner's store. */
export interface RealisationSources {
  readDerivation(drvPath: string): Promise<Derivation>;
  references(path: string): Promise<string[]>;
}

const MAX_KNOWN = 100_000;

interface Original {
  readonly drvPath: string;
  /** The realised paths its resolution used (`<input drv>!<output>` → path). */
  readonly realised: ReadonlyMap<string, string>;
}

/**
 * The realisations of built content-addressed outputs, from what the runner
 * knows (the .drv files, the paths builders reported, the resolutions it
 * made), as Nix 2.8's resolvedFinished registers them: one per output for
 * the derivation built (the resolved one: no dependencies), and one for
 * each original derivation resolved to it, whose dependentRealisations are
 * the realisations of its inputs' outputs (and what they depend on) that
 * the built output references. Unsigned: each cache signs with its key.
 */
export class CaRealisations {
  /** Resolved .drv → the originals resolved to it (until their realisations are made). */
  private readonly originals = new Map<string, Original[]>();
  /** Realisations made by this runner, by id: the dependencies of later ones. */
  private readonly known = new Map<string, Realisation>();

  constructor(private readonly src: RealisationSources) {}

  /** `original` was resolved to `resolvedDrvPath` with `realised`. */
  resolvedFrom(resolvedDrvPath: string, original: string, realised: ReadonlyMap<string, string>): void {
    const list = this.originals.get(resolvedDrvPath) ?? [];
    if (!list.some((o) => o.drvPath === original)) list.push({ drvPath: original, realised });
    this.originals.set(resolvedDrvPath, list);
  }

  /** No step needs `resolvedDrvPath` any more: its originals are forgotten (their realisations were made, or never will be). */
  forget(resolvedDrvPath: string): void {
    this.originals.delete(resolvedDrvPath);
  }

  /**
   * The realisations of `drvPath` built to `outputs`, and of the originals
   * resolved to it, dependencies first. Empty for a derivation whose outputs
   * are input-addressed (`floating` false says so without reading it) and
   * that no original was resolved to.
   */
  async of(drvPath: string, outputs: readonly { name: string; path: string }[], floating = true): Promise<Realisation[]> {
    const originals = this.originals.get(drvPath) ?? [];
    // (Neither floating nor resolved from anything: no .drv to read.)
    if (!floating && originals.length === 0) return [];
    this.originals.delete(drvPath);
    const drv = await this.src.readDerivation(drvPath);
    const hasher = new DerivationHasher((p) => this.src.readDerivation(p));
    const out: Realisation[] = [];
    const paths = new Map(outputs.map((o) => [o.name, o.path]));
    if (derivationType(drv) === 'floating') {
      const ids = await realisationIds(hasher, drv, derivationName(drv, drvPath));
      for (const [name, id] of ids) {
        const path = paths.get(name);
        if (path !== undefined) out.push(this.remember({ id, outPath: storePathBaseName(path), signatures: [], dependentRealisations: {} }));
      }
    }
    for (const o of originals) {
      const odrv = await this.src.readDerivation(o.drvPath);
      const ids = await realisationIds(hasher, odrv, derivationName(odrv, o.drvPath));
      const closure = await this.inputClosure(hasher, odrv, o.realised);
      for (const [name, id] of ids) {
        const path = paths.get(name);
        if (path === undefined) continue;
        const deps = dependentRealisations(closure, await this.src.references(path));
        for (const depId of Object.keys(deps)) if (!out.some((r) => r.id === depId) && this.known.has(depId)) out.unshift(this.known.get(depId)!);
        out.push(this.remember({ id, outPath: storePathBaseName(path), signatures: [], dependentRealisations: deps }));
      }
    }
    return out;
  }

  /** The realisations of `drv`'s floating inputs' outputs, and those they depend on (as far as this runner knows). */
  private async inputClosure(hasher: DerivationHasher, drv: Derivation, realised: ReadonlyMap<string, string>): Promise<Realisation[]> {
    const closure = new Map<string, Realisation>();
    const add = (r: Realisation): void => {
      if (closure.has(r.id)) return;
      closure.set(r.id, r);
      for (const dep of Object.keys(r.dependentRealisations)) {
        const k = this.known.get(dep);
        if (k) add(k);
      }
    };
    for (const [inputPath, names] of drv.inputDrvs) {
      const input = await this.src.readDerivation(inputPath);
      if (derivationType(input) !== 'floating') continue;
      const ids = await realisationIds(hasher, input, derivationName(input, inputPath));
      for (const name of names) {
        const id = ids.get(name);
        const path = realised.get(realisedKey(inputPath, name));
        if (id === undefined || path === undefined) continue;
        add(this.known.get(id) ?? { id, outPath: storePathBaseName(path), signatures: [], dependentRealisations: {} });
      }
    }
    return [...closure.values()];
  }

  private remember(r: Realisation): Realisation {
    // Bounded: the oldest are forgotten (a later realisation then lists fewer dependencies).
    if (this.known.size >= MAX_KNOWN) this.known.delete(this.known.keys().next().value!);
    this.known.set(r.id, r);
    return r;
  }
}
