import { NixFormatError } from '../errors/index.ts';
import { compareUtf8, sortedSet } from './derivation-aterm.ts';
import type { Derivation, DerivationOutput } from './derivation-type.ts';
import { type Hash, type HashAlgo, isHashAlgo, parseHash } from './hash.ts';
import { type FileIngestionMethod, storePathName } from './store-path.ts';

export {
  compareUtf8,
  parseDerivation,
  type ParseDerivationOptions,
  serializeDerivation,
  type SerializeDerivationOptions,
} from './derivation-aterm.ts';

export type { Derivation, DerivationOutput } from './derivation-type.ts';

export type OutputKind = 'inputAddressed' | 'fixed' | 'floating' | 'deferred' | 'impure';

// ----------------------------------------------------------- interpreting

export function outputKind(o: DerivationOutput): OutputKind {
  if (o.hashAlgo === '') return o.path === '' ? 'deferred' : 'inputAddressed';
  if (o.hash === 'impure') return 'impure';
  return o.hash === '' ? 'floating' : 'fixed';
}

export const isFixedOutput = (o: DerivationOutput): boolean => outputKind(o) === 'fixed';
export const isFloatingCA = (o: DerivationOutput): boolean => outputKind(o) === 'floating';
export const isDeferred = (o: DerivationOutput): boolean => outputKind(o) === 'deferred';

/** Ingestion method and algorithm of a content-addressed output; null for input-addressed ones. */
export function outputHashMethod(o: DerivationOutput): { method: FileIngestionMethod; algo: HashAlgo } | null {
  if (o.hashAlgo === '') return null;
  const recursive = o.hashAlgo.startsWith('r:');
  const algo = recursive ? o.hashAlgo.slice(2) : o.hashAlgo;
  if (!isHashAlgo(algo)) throw new NixFormatError('derivation', `unknown hash algorithm '${o.hashAlgo}'`);
  return { method: recursive ? 'recursive' : 'flat', algo };
}

/** The expected content hash of a fixed output. */
export function fixedOutputHash(o: DerivationOutput): { method: FileIngestionMethod; hash: Hash } {
  const m = outputHashMethod(o);
  if (!m || !isFixedOutput(o)) throw new NixFormatError('derivation', 'not a fixed output');
  return { method: m.method, hash: parseHash(o.hash, m.algo) };
}

/**
 * The derivation's type, as Nix 2.8 decides it: all outputs must be of one
 * kind, and a fixed-output derivation has exactly one output, named `out`.
 */
export function derivationType(drv: Derivation): OutputKind {
  const kinds = new Set([...drv.outputs.values()].map(outputKind));
  if (kinds.size === 0) throw new NixFormatError('derivation', 'must have at least one output');
  if (kinds.size > 1) throw new NixFormatError('derivation', "can't mix derivation output types");
  const kind = [...kinds][0]!;
  if (kind === 'fixed' && (drv.outputs.size !== 1 || !drv.outputs.has('out'))) {
    throw new NixFormatError('derivation', 'a fixed-output derivation has one output, named "out"');
  }
  return kind;
}

/** False when output paths are only known after the build (floating CA, deferred, impure). */
export function hasKnownOutputPaths(drv: Derivation): boolean {
  const t = derivationType(drv);
  return t === 'inputAddressed' || t === 'fixed';
}

export function isBuiltin(drv: Derivation): boolean {
  return drv.builder.startsWith('builtin:');
}

/** Every store path the .drv refers to: its own references in the store. */
export function derivationReferences(drv: Derivation): string[] {
  return sortedSet([...drv.inputSrcs, ...drv.inputDrvs.keys()]);
}

/** The `__json` attribute of a `__structuredAttrs` derivation, parsed; null without one. */
export function structuredAttrs(drv: Derivation): Record<string, unknown> | null {
  const json = drv.env.get('__json');
  if (json === undefined) return null;
  let v: unknown;
  try {
    v = JSON.parse(json);
  } catch (e) {
    throw new NixFormatError('derivation', `cannot parse __json attribute: ${(e as Error).message}`, { cause: e });
  }
  if (v === null || typeof v !== 'object' || Array.isArray(v)) {
    throw new NixFormatError('derivation', '__json attribute is not an object');
  }
  return v as Record<string, unknown>;
}

/** A list-of-strings attribute: a JSON array with structured attrs, else whitespace-separated env. */
function stringsAttr(drv: Derivation, name: string): string[] | undefined {
  const attrs = structuredAttrs(drv);
  if (attrs) {
    const v = attrs[name];
    if (v === undefined) return undefined;
    if (!Array.isArray(v) || !v.every((x) => typeof x === 'string')) {
      throw new NixFormatError('derivation', `attribute '${name}' must be a list of strings`);
    }
    return v as string[];
  }
  const v = drv.env.get(name);
  return v === undefined ? undefined : v.split(/[ \t\n\r]+/).filter(Boolean);
}

/** A Boolean attribute: a JSON boolean with structured attrs, else env value "1". */
function boolAttr(drv: Derivation, name: string, def: boolean): boolean {
  const attrs = structuredAttrs(drv);
  if (attrs) {
    const v = attrs[name];
    if (v === undefined) return def;
    if (typeof v !== 'boolean') throw new NixFormatError('derivation', `attribute '${name}' must be a Boolean`);
    return v;
  }
  const v = drv.env.get(name);
  return v === undefined ? def : v === '1';
}

/**
 * Features a machine needs to build this derivation, sorted. Like Nix 2.8,
 * a derivation whose output paths are unknown before building also needs
 * `ca-derivations`.
 */
export function requiredSystemFeatures(drv: Derivation): string[] {
  const features = new Set(stringsAttr(drv, 'requiredSystemFeatures') ?? []);
  if (!hasKnownOutputPaths(drv)) features.add('ca-derivations');
  return [...features].sort(compareUtf8);
}

export function preferLocalBuild(drv: Derivation): boolean {
  return boolAttr(drv, 'preferLocalBuild', false);
}

/**
 * Whether the derivation asks for a determinism check: env `isDetermistic`
 * = "1", with Hydra's spelling (C++ queue runner queue-monitor.cc:463; read
 * from env only, as there).
 */
export function isDeterministic(drv: Derivation): boolean {
  return drv.env.get('isDetermistic') === '1';
}

export function allowSubstitutes(drv: Derivation): boolean {
  return boolAttr(drv, 'allowSubstitutes', true);
}

/**
 * The derivation's name. The .drv does not store it; Nix takes it from the
 * .drv's path, so that wins. Without a path: env `name`, then `__json`.
 */
export function derivationName(drv: Derivation, drvPath?: string): string {
  if (drvPath !== undefined) {
    const name = storePathName(drvPath);
    if (!name.endsWith('.drv')) throw new NixFormatError('derivation', `'${drvPath}' is not a .drv path`);
    return name.slice(0, -4);
  }
  const fromEnv = drv.env.get('name');
  if (fromEnv !== undefined) return fromEnv;
  const fromJson = structuredAttrs(drv)?.name;
  if (typeof fromJson === 'string') return fromJson;
  throw new NixFormatError('derivation', 'derivation has no name');
}
