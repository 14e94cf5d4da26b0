import { NixFormatError } from '../errors/index.ts';
import { encodeBase32 } from './base32.ts';
import {
  type Derivation,
  derivationName,
  derivationReferences,
  derivationType,
  fixedOutputHash,
  serializeDerivation,
} from './derivation.ts';
import { type Hash, sha256 } from './hash.ts';
import {
  makeFixedOutputPath,
  makeOutputPath,
  makeTextPath,
  outputPathName,
  parseStorePath,
  STORE_DIR,
} from './store-path.ts';

/** The store path a derivation is written to: a text path over its ATerm, referencing its inputs. */
export function derivationStorePath(drv: Derivation, name: string, storeDir: string = STORE_DIR): string {
  return makeTextPath(`${name}.drv`, sha256(serializeDerivation(drv)), derivationReferences(drv), storeDir);
}

/** Path of a fixed output, computed from its expected hash (what Nix writes into the .drv). */
export function fixedOutputPath(drv: Derivation, drvName: string, outputName: string, storeDir: string = STORE_DIR): string {
  const o = drv.outputs.get(outputName);
  if (!o) throw new NixFormatError('derivation', `no output '${outputName}'`);
  const { method, hash } = fixedOutputHash(o);
  return makeFixedOutputPath(method, hash, outputPathName(drvName, outputName), [], false, storeDir);
}

export interface DrvHash {
  /** Per output; input-addressed derivations have the same hash for all outputs. */
  hashes: Map<string, Hash>;
  /** 'deferred' when some output path depends on a floating CA output, so it cannot be known yet. */
  kind: 'regular' | 'deferred';
}

/** Reads the derivation at a .drv path (from disk, a database, a cache…). */
export type DerivationReader = (drvPath: string) => Derivation | Promise<Derivation>;

const IMPURE_OUTPUT_HASH = sha256('impure');

/**
 * Nix's hashDerivationModulo. Output paths of input-addressed derivations are
 * a hash of the .drv with each input .drv replaced by *its* hash modulo, so
 * that fixed-output inputs contribute only their content hash (changing how a
 * tarball is fetched does not rebuild the world). Recurses through inputs with
 * `read`, memoised in `cache` (keyed by .drv path, never masked: Nix masks
 * only the top-level derivation).
 */
export class DerivationHasher {
  private readonly cache = new Map<string, Promise<DrvHash>>();

  constructor(
    private readonly read: DerivationReader,
    private readonly storeDir: string = STORE_DIR,
  ) {}

  /** Hash of the derivation stored at `drvPath` (unmasked, as an input). */
  hashPath(drvPath: string): Promise<DrvHash> {
    let h = this.cache.get(drvPath);
    if (!h) {
      h = Promise.resolve(this.read(drvPath)).then((drv) => this.hash(drv, derivationName(drv, drvPath), false));
      h.catch(() => this.cache.delete(drvPath));
      this.cache.set(drvPath, h);
    }
    return h;
  }

  async hash(drv: Derivation, drvName: string, maskOutputs: boolean): Promise<DrvHash> {
    const type = derivationType(drv);
    if (type === 'fixed') {
      const hashes = new Map<string, Hash>();
      for (const [name, o] of drv.outputs) {
        const { method, hash } = fixedOutputHash(o);
        const path = fixedOutputPath(drv, drvName, name, this.storeDir);
        const methodAlgo = `${method === 'recursive' ? 'r:' : ''}${hash.algo}`;
        hashes.set(name, sha256(`fixed:out:${methodAlgo}:${hash.toBase16()}:${path}`));
      }
      return { hashes, kind: 'regular' };
    }
    if (type === 'impure') {
      return { hashes: new Map([...drv.outputs.keys()].map((n) => [n, IMPURE_OUTPUT_HASH])), kind: 'deferred' };
    }
    let kind: DrvHash['kind'] = type === 'floating' ? 'deferred' : 'regular';
    // Input hashes (base16) → output names; two inputs with equal hashes merge, as in Nix.
    const inputs = new Map<string, Set<string>>();
    const entries = [...drv.inputDrvs];
    const results = await Promise.all(entries.map(([path]) => this.hashPath(path)));
    entries.forEach(([path, outputNames], i) => {
      const res = results[i]!;
      if (res.kind === 'deferred') kind = 'deferred';
      for (const name of outputNames) {
        const h = res.hashes.get(name);
        if (!h) throw new NixFormatError('derivation', `input '${path}' has no output '${name}'`);
        const key = h.toBase16();
        const set = inputs.get(key) ?? new Set<string>();
        set.add(name);
        inputs.set(key, set);
      }
    });
    const inputDrvs = new Map([...inputs].map(([k, v]) => [k, [...v]]));
    const h = sha256(serializeDerivation(drv, { maskOutputs, inputDrvs }));
    return { hashes: new Map([...drv.outputs.keys()].map((n) => [n, h])), kind };
  }

  /**
   * Output paths as Nix computes them at instantiation: input-addressed from
   * the masked hash modulo, fixed from the content hash; null where the path
   * is only known after building (floating CA, deferred, impure).
   */
  async outputPaths(drv: Derivation, drvName: string): Promise<Map<string, string | null>> {
    const type = derivationType(drv);
    const out = new Map<string, string | null>();
    if (type === 'fixed') {
      for (const name of drv.outputs.keys()) out.set(name, fixedOutputPath(drv, drvName, name, this.storeDir));
      return out;
    }
    if (type !== 'inputAddressed' && type !== 'deferred') {
      for (const name of drv.outputs.keys()) out.set(name, null);
      return out;
    }
    const { hashes, kind } = await this.hash(drv, drvName, true);
    for (const [name, h] of hashes) out.set(name, kind === 'deferred' ? null : makeOutputPath(name, h, drvName, this.storeDir));
    return out;
  }
}

/**
 * Placeholder for a derivation's own output whose path is not known when the
 * .drv is written (floating CA): `/` + base32(sha256("nix-output:<name>")).
 * The builder sees it in env and Nix rewrites it to the real path.
 */
export function hashPlaceholder(outputName: string): string {
  return `/${encodeBase32(sha256(`nix-output:${outputName}`).bytes)}`;
}

/**
 * Placeholder a dependent .drv holds for an output of a floating CA input:
 * `/` + base32(sha256("nix-upstream-output:<drv hash part>:<output path name>")).
 * Resolving a CA derivation replaces these with the realised paths.
 */
export function downstreamPlaceholder(drvPath: string, outputName: string): string {
  const p = parseStorePath(drvPath);
  if (!p.name.endsWith('.drv')) throw new NixFormatError('derivation', `'${drvPath}' is not a .drv path`);
  const clear = `nix-upstream-output:${p.hashPart}:${outputPathName(p.name.slice(0, -4), outputName)}`;
  return `/${encodeBase32(sha256(clear).bytes)}`;
}
