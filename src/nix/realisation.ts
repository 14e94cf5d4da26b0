/**
 * Realisations as Nix 2.8 writes and reads them (libstore/realisation.cc):
 * which store path a content-addressed derivation's output was built to.
 *
 * - id: `sha256:<base16 hash modulo of the .drv>!<output>` (DrvOutput), the
 *   hash being hashDerivationModulo with outputs masked (staticOutputHashes);
 * - a binary cache holds one as `realisations/<id>.doi`;
 * - the body is nlohmann's compact dump of {dependentRealisations, id,
 *   outPath, signatures}: keys in byte order, outPath and the dependencies'
 *   paths as base names, signatures a sorted set;
 * - a signature covers the fingerprint, that JSON without `signatures`.
 *
 * The Rust runner of Hydra writes `realisations/<drv base name>^<out>.doi`
 * with a key/value body instead, which Nix 2.8 does not read.
 */
import { NixFormatError } from '../errors/index.ts';
import { compareUtf8, sortedSet } from './derivation-aterm.ts';
import type { DerivationHasher } from './derivation-paths.ts';
import type { Derivation } from './derivation.ts';
import { type SecretKey, signFingerprint, type PublicKey, verifyFingerprint } from './signing.ts';
import { parseStorePathBaseName } from './store-path.ts';

export interface Realisation {
  /** `sha256:<hash modulo, base16>!<output>` */
  id: string;
  /** Base name of the output path. */
  outPath: string;
  signatures: string[];
  /** id → base name of the output, for outputs this one's path depends on. */
  dependentRealisations: Record<string, string>;
}

const ID_RE = /^sha256:[0-9a-f]{64}![A-Za-z0-9+\-._?=]+$/;

export function realisationId(drvHash: string, outputName: string): string {
  const id = `sha256:${drvHash}!${outputName}`;
  if (!ID_RE.test(id)) throw new NixFormatError('realisation', `bad realisation id '${id}'`);
  return id;
}

/** The realisation ids of a derivation's outputs, as Nix computes them (output name → id). */
export async function realisationIds(hasher: DerivationHasher, drv: Derivation, drvName: string): Promise<Map<string, string>> {
  const { hashes } = await hasher.hash(drv, drvName, true);
  return new Map([...hashes].map(([out, h]) => [out, realisationId(h.toBase16(), out)]));
}

function check(r: Realisation): void {
  if (!ID_RE.test(r.id)) throw new NixFormatError('realisation', `bad realisation id '${r.id}'`);
  parseStorePathBaseName(r.outPath);
  for (const [id, path] of Object.entries(r.dependentRealisations)) {
    if (!ID_RE.test(id)) throw new NixFormatError('realisation', `bad dependent realisation id '${id}'`);
    parseStorePathBaseName(path);
  }
}

function sortedRecord(rec: Record<string, string>): Record<string, string> {
  const out: Record<string, string> = {};
  for (const k of Object.keys(rec).sort(compareUtf8)) out[k] = rec[k]!;
  return out;
}

/** What a signature covers: the JSON without `signatures`. */
export function realisationFingerprint(r: Realisation): string {
  check(r);
  return JSON.stringify({ dependentRealisations: sortedRecord(r.dependentRealisations), id: r.id, outPath: r.outPath });
}

/** The `.doi` file's body, byte for byte as Nix 2.8 writes it. */
export function formatRealisation(r: Realisation): string {
  check(r);
  return JSON.stringify({
    dependentRealisations: sortedRecord(r.dependentRealisations),
    id: r.id,
    outPath: r.outPath,
    signatures: sortedSet(r.signatures),
  });
}

/** Reads a `.doi` body as Nix 2.8's Realisation::fromJSON does (signatures and dependencies optional). */
export function parseRealisation(text: string): Realisation {
  let v: unknown;
  try {
    v = JSON.parse(text);
  } catch (e) {
    throw new NixFormatError('realisation', `not JSON: ${(e as Error).message}`, { cause: e });
  }
  if (v === null || typeof v !== 'object' || Array.isArray(v)) throw new NixFormatError('realisation', 'not a JSON object');
  const o = v as Record<string, unknown>;
  if (typeof o.id !== 'string') throw new NixFormatError('realisation', 'missing field id');
  if (typeof o.outPath !== 'string') throw new NixFormatError('realisation', 'missing field outPath');
  const sigs = o.signatures ?? [];
  if (!Array.isArray(sigs) || !sigs.every((s) => typeof s === 'string')) throw new NixFormatError('realisation', 'signatures is not a list of strings');
  const deps = o.dependentRealisations ?? {};
  if (deps === null || typeof deps !== 'object' || Array.isArray(deps) || !Object.values(deps).every((p) => typeof p === 'string')) {
    throw new NixFormatError('realisation', 'dependentRealisations is not an object of strings');
  }
  const r: Realisation = { id: o.id, outPath: o.outPath, signatures: sigs as string[], dependentRealisations: { ...(deps as Record<string, string>) } };
  check(r);
  return r;
}

/** The realisation with a signature by `sk` added (a set: signing twice adds nothing). */
export function signRealisation(sk: SecretKey, r: Realisation): Realisation {
  return { ...r, signatures: sortedSet([...r.signatures, signFingerprint(sk, realisationFingerprint(r))]) };
}

/** Whether one of `sigs` is a valid signature of the realisation by one of `keys`. */
export function realisationSignedBy(keys: Iterable<PublicKey>, r: Realisation): boolean {
  const fp = realisationFingerprint(r);
  const list = [...keys];
  return r.signatures.some((s) => verifyFingerprint(list, fp, s));
}

/**
 * The dependentRealisations Nix 2.8 records for an output of a derivation
 * that was resolved (drvOutputReferences): among the realisations of the
 * derivation's input outputs and, transitively, those they depend on, the
 * ones whose output path the built output references directly.
 * `inputClosure` is that closure; `references` are the output's references
 * (base names or full paths).
 */
export function dependentRealisations(inputClosure: Iterable<Realisation>, references: Iterable<string>): Record<string, string> {
  const refs = new Set([...references].map((r) => (r.startsWith('/') ? r.slice(r.lastIndexOf('/') + 1) : r)));
  const out: Record<string, string> = {};
  for (const r of inputClosure) if (refs.has(r.outPath)) out[r.id] = r.outPath;
  return sortedRecord(out);
}
