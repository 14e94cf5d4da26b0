/**
 * Resolving a derivation once its inputs are built, as Nix 2.8 does
 * (`Derivation::tryResolve` and `rewriteDerivation` in libstore/derivations.cc):
 *
 * - every output of every input derivation must have a realised path, or
 *   resolution fails (Nix gives up with a warning; we throw);
 * - the input derivations are dropped and those realised paths join inputSrcs;
 * - each input output's downstream placeholder is replaced by its real path in
 *   the builder, the args, and env names and values (`__json` of structured
 *   attrs is an env value, so it is rewritten like any other); replacements
 *   apply one after the other in the placeholders' byte order, and an env
 *   name that two names rewrite to keeps the value of the first (std::map
 *   emplace);
 * - the derivation's own outputs are kept: floating CA ones stay floating
 *   (their `hashPlaceholder`s stay in env for the builder to see), fixed ones
 *   stay fixed, and deferred input-addressed ones get their path, computed
 *   from the masked hash of the resolved derivation, both as output and in
 *   env.
 *
 * A pure function of its arguments (no store access), so it runs on the
 * worker pool.
 */
import { DerivationResolveError } from '../errors/index.ts';
import { compareUtf8, sortedSet } from './derivation-aterm.ts';
import { downstreamPlaceholder } from './derivation-paths.ts';
import {
  type Derivation,
  type DerivationOutput,
  derivationName,
  derivationType,
  isDeferred,
  serializeDerivation,
} from './derivation.ts';
import { sha256 } from './hash.ts';
import { isStorePath, makeOutputPath, STORE_DIR } from './store-path.ts';

/** The key of an input output in the map of realised paths: `<drvPath>!<output>`. */
export function realisedKey(drvPath: string, outputName: string): string {
  return `${drvPath}!${outputName}`;
}

/** Realised paths of input derivations' outputs, keyed by realisedKey. */
export type RealisedOutputs = ReadonlyMap<string, string>;

/**
 * The map resolveDerivation takes, from the outputs of input derivations
 * as the runner knows them (e.g. BuildStepOutputs rows of their steps);
 * outputs without a path yet are left out, so resolving fails on them.
 */
export function realisedOutputs(inputs: Iterable<readonly [drvPath: string, outputs: Iterable<readonly [name: string, path: string | null]>]>): Map<string, string> {
  const m = new Map<string, string>();
  for (const [drvPath, outputs] of inputs) for (const [name, path] of outputs) if (path !== null) m.set(realisedKey(drvPath, name), path);
  return m;
}

export interface Resolution {
  /** The basic derivation: no input derivations, placeholders of inputs replaced. */
  drv: Derivation;
  /** False when the resolved derivation is the original one (so its .drv path is too). */
  changed: boolean;
  /** Downstream placeholder → the real path that replaced it. */
  rewrites: Map<string, string>;
}

/**
 * Whether the builder must receive the derivation resolved, as Nix 2.8's
 * DerivationGoal decides (inputsRealised): a deferred input-addressed one, or
 * a floating content-addressed or impure one with input derivations. Nix
 * also resolves a fixed-output derivation with input derivations when
 * `ca-derivations` is enabled, but only to share builds: its output path is
 * fixed either way, so it is built as it is here.
 */
export function mustResolve(drv: Derivation): boolean {
  if (drv.inputDrvs.size === 0) return false;
  const t = derivationType(drv);
  return t === 'deferred' || t === 'floating' || t === 'impure';
}

function rewriteStrings(s: string, rewrites: ReadonlyArray<readonly [string, string]>): string {
  for (const [from, to] of rewrites) if (s.includes(from)) s = s.split(from).join(to);
  return s;
}

/**
 * Resolves the derivation stored at `drvPath` with the realised paths of
 * its inputs' outputs. Throws DerivationResolveError when one is missing or
 * is not a store path. Entries for outputs the derivation does not use are
 * ignored.
 */
export function resolveDerivation(drvPath: string, drv: Derivation, realised: RealisedOutputs, storeDir: string = STORE_DIR): Resolution {
  const rewrites = new Map<string, string>();
  const inputSrcs = new Set(drv.inputSrcs);
  for (const [inputDrv, outputNames] of drv.inputDrvs) {
    for (const name of outputNames) {
      const path = realised.get(realisedKey(inputDrv, name));
      if (path === undefined) throw new DerivationResolveError(drvPath, inputDrv, name, 'unrealised');
      if (!isStorePath(path, storeDir)) throw new DerivationResolveError(drvPath, inputDrv, name, 'bad-path');
      rewrites.set(downstreamPlaceholder(inputDrv, name), path);
      inputSrcs.add(path);
    }
  }
  const ordered = [...rewrites].sort(([a], [b]) => compareUtf8(a, b));

  const env = new Map<string, string>();
  for (const name of [...drv.env.keys()].sort(compareUtf8)) {
    const newName = rewriteStrings(name, ordered);
    if (!env.has(newName)) env.set(newName, rewriteStrings(drv.env.get(name)!, ordered));
  }
  const resolved: Derivation = {
    outputs: new Map(drv.outputs),
    inputDrvs: new Map(),
    inputSrcs: sortedSet(inputSrcs),
    system: drv.system,
    builder: rewriteStrings(drv.builder, ordered),
    args: drv.args.map((a) => rewriteStrings(a, ordered)),
    env,
  };

  // Deferred outputs become input-addressed: the resolved derivation has no
  // input derivations, so its hash modulo is the hash of its masked ATerm.
  const deferred = [...drv.outputs].filter(([, o]) => isDeferred(o)).map(([name]) => name);
  if (deferred.length > 0) {
    const drvName = derivationName(drv, drvPath);
    const h = sha256(serializeDerivation(resolved, { maskOutputs: true }));
    for (const name of deferred) {
      const path = makeOutputPath(name, h, drvName, storeDir);
      const out: DerivationOutput = { path, hashAlgo: '', hash: '' };
      resolved.outputs.set(name, out);
      resolved.env.set(name, path);
    }
  }

  const changed = drv.inputDrvs.size > 0 || serializeDerivation(resolved) !== serializeDerivation(drv);
  return { drv: resolved, changed, rewrites };
}
