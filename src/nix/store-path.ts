import { NixFormatError } from '../errors/index.ts';
import { encodeBase32, isBase32 } from './base32.ts';
import { accepts } from '../util/accepts.ts';
import { compressHash, Hash, sha256 } from './hash.ts';

export const STORE_DIR = '/nix/store';
/** 20 bytes of compressed sha256 in Nix base32. */
export const HASH_PART_LENGTH = 32;
export const MAX_NAME_LENGTH = 211;

const NAME_RE = /^[A-Za-z0-9+\-._?=]+$/;

export interface StorePath {
  /** Full path, e.g. /nix/store/<hash>-<name>. */
  readonly path: string;
  readonly storeDir: string;
  readonly hashPart: string;
  readonly name: string;
  /** `<hash>-<name>`, the form narinfo References and Deriver use. */
  readonly baseName: string;
}

/**
 * Why a name is not a valid store path name, or null when it is. Mirrors Nix
 * 2.8's checkName: non-empty, at most 211 chars from [A-Za-z0-9+-._?=].
 * Nix 2.8 accepts names starting with '.', even "." and ".." (it creates
 * /nix/store/<hash>-.. from builtins.toFile ".." …), so we do too: rejecting
 * them would refuse paths that real builders produce.
 */
export function storePathNameError(name: string): string | null {
  if (name.length === 0) return 'empty name';
  if (name.length > MAX_NAME_LENGTH) return `name longer than ${MAX_NAME_LENGTH} characters`;
  if (!NAME_RE.test(name)) {
    const bad = [...name].find((c) => !NAME_RE.test(c));
    return `illegal character '${bad}' in name`;
  }
  return null;
}

export function isValidStorePathName(name: string): boolean {
  return storePathNameError(name) === null;
}

/** Parses `<hash>-<name>` (no directory). */
export function parseStorePathBaseName(baseName: string, storeDir: string = STORE_DIR): StorePath {
  if (baseName.length < HASH_PART_LENGTH + 2 || baseName[HASH_PART_LENGTH] !== '-') {
    throw new NixFormatError('store path', `'${baseName}' is not <32-char hash>-<name>`);
  }
  const hashPart = baseName.slice(0, HASH_PART_LENGTH);
  if (!isBase32(hashPart)) {
    throw new NixFormatError('store path', `'${baseName}' has a hash part that is not Nix base32`);
  }
  const name = baseName.slice(HASH_PART_LENGTH + 1);
  const err = storePathNameError(name);
  if (err) throw new NixFormatError('store path', `'${baseName}': ${err}`);
  return { path: `${storeDir}/${baseName}`, storeDir, hashPart, name, baseName };
}

/** Parses a full store path. Exact: no trailing slash, no sub-path, no `..`. */
export function parseStorePath(path: string, storeDir: string = STORE_DIR): StorePath {
  const prefix = `${storeDir}/`;
  if (!path.startsWith(prefix)) throw new NixFormatError('store path', `'${path}' is not in ${storeDir}`);
  const baseName = path.slice(prefix.length);
  if (baseName.includes('/')) throw new NixFormatError('store path', `'${path}' is not a top-level store path`);
  return parseStorePathBaseName(baseName, storeDir);
}

/**
 * Parses the path of a derivation as it may be read from disk: a top-level
 * store path in `storeDir` (so no `..`, no sub-path, no other directory)
 * whose name ends in `.drv`. A Builds row's drvPath is untrusted input, and
 * the runner reads it as root.
 */
export function parseDerivationPath(path: string, storeDir: string = STORE_DIR): StorePath {
  const p = parseStorePath(path, storeDir);
  if (!p.name.endsWith('.drv')) throw new NixFormatError('store path', `'${path}' is not a derivation (its name does not end in .drv)`);
  return p;
}

export function isStorePath(path: string, storeDir: string = STORE_DIR): boolean {
  return accepts((p: string) => parseStorePath(p, storeDir), path);
}

/** The store path that contains `path` (which may point inside it), like Nix's toStorePath. */
export function toStorePath(path: string, storeDir: string = STORE_DIR): StorePath {
  const prefix = `${storeDir}/`;
  if (!path.startsWith(prefix)) throw new NixFormatError('store path', `'${path}' is not in ${storeDir}`);
  const slash = path.indexOf('/', prefix.length);
  return parseStorePath(slash < 0 ? path : path.slice(0, slash), storeDir);
}

export function storePathHashPart(path: string): string {
  return parseStorePath(path).hashPart;
}

export function storePathName(path: string): string {
  return parseStorePath(path).name;
}

export function storePathBaseName(path: string): string {
  return parseStorePath(path).baseName;
}

/** Nix orders store path sets by base name; within one store dir that is the order of full paths. */
export function sortStorePaths(paths: Iterable<string>): string[] {
  return [...new Set(paths)].sort((a, b) => (a < b ? -1 : a > b ? 1 : 0));
}

/**
 * The store path for `<type>:sha256:<inner hex>:<storeDir>:<name>`: its hash
 * part is that string's sha256 folded to 20 bytes, in Nix base32.
 * `innerHash` is a sha256 Hash or its base16 text.
 */
export function makeStorePath(type: string, innerHash: Hash | string, name: string, storeDir: string = STORE_DIR): string {
  const hex = typeof innerHash === 'string' ? innerHash : innerHash.toBase16();
  if (typeof innerHash !== 'string' && innerHash.algo !== 'sha256') {
    throw new NixFormatError('store path', `inner hash must be sha256, got ${innerHash.algo}`);
  }
  if (!/^[0-9a-f]{64}$/.test(hex)) throw new NixFormatError('store path', `inner hash '${hex}' is not sha256 base16`);
  const err = storePathNameError(name);
  if (err) throw new NixFormatError('store path', `cannot make a store path named '${name}': ${err}`);
  const digest = sha256(`${type}:sha256:${hex}:${storeDir}:${name}`);
  return `${storeDir}/${encodeBase32(compressHash(digest.bytes, 20))}-${name}`;
}

/** `<base>:<ref1>:<ref2>…[:self]`: references go into the type so they change the path. */
function typeWithReferences(base: string, references: Iterable<string>, selfReference = false): string {
  let type = base;
  for (const ref of sortStorePaths(references)) type += `:${ref}`;
  if (selfReference) type += ':self';
  return type;
}

/** Path of a text file added with references (builtins.toFile, .drv files). */
export function makeTextPath(name: string, contentHash: Hash, references: Iterable<string> = [], storeDir: string = STORE_DIR): string {
  if (contentHash.algo !== 'sha256') throw new NixFormatError('store path', 'text paths need a sha256 content hash');
  return makeStorePath(typeWithReferences('text', references), contentHash, name, storeDir);
}

export type FileIngestionMethod = 'flat' | 'recursive';

/**
 * Path of content-addressed data: fixed-output derivation outputs, `nix-store
 * --add(-fixed)`, floating CA outputs. Only recursive sha256 may carry
 * references ("source" type); anything else is `output:out` over a hash of
 * `fixed:out:[r:]<algo>:<hex>:`.
 */
export function makeFixedOutputPath(
  method: FileIngestionMethod,
  hash: Hash,
  name: string,
  references: Iterable<string> = [],
  selfReference = false,
  storeDir: string = STORE_DIR,
): string {
  if (method === 'recursive' && hash.algo === 'sha256') {
    return makeStorePath(typeWithReferences('source', references, selfReference), hash, name, storeDir);
  }
  if (selfReference || [...references].length > 0) {
    throw new NixFormatError('store path', 'only recursive sha256 content-addressed paths may have references');
  }
  const prefix = method === 'recursive' ? 'r:' : '';
  const inner = sha256(`fixed:out:${prefix}${hash.format('base16')}:`);
  return makeStorePath('output:out', inner, name, storeDir);
}

/** An output's store path name: the derivation name, with `-<output>` unless it is `out`. */
export function outputPathName(drvName: string, outputName: string): string {
  return outputName === 'out' ? drvName : `${drvName}-${outputName}`;
}

/** Path of an input-addressed output, from the derivation's hash modulo (see derivation-paths.ts). */
export function makeOutputPath(outputName: string, drvHash: Hash, drvName: string, storeDir: string = STORE_DIR): string {
  return makeStorePath(`output:${outputName}`, drvHash, outputPathName(drvName, outputName), storeDir);
}
