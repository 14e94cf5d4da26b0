/**
 * fast-check arbitraries for Nix data, shared by the tests of src/nix and
 * by anyone who needs random but valid store paths, hashes, derivations or
 * narinfos. Everything generated here is canonical: parse(serialize(x))
 * equals x exactly.
 */
import fc from 'fast-check';
import { encodeBase32 } from '../../src/nix/base32.ts';
import { compareUtf8, type Derivation, type DerivationOutput } from '../../src/nix/derivation.ts';
import { Hash, HASH_SIZES, type HashAlgo } from '../../src/nix/hash.ts';
import type { NarInfo } from '../../src/nix/narinfo.ts';
import { STORE_DIR } from '../../src/nix/store-path.ts';

const NAME_CHARS = 'abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789+-._?=';

export const hashAlgoArb: fc.Arbitrary<HashAlgo> = fc.constantFrom('md5', 'sha1', 'sha256', 'sha512');

export function hashArb(algo?: HashAlgo): fc.Arbitrary<Hash> {
  const algoArb = algo ? fc.constant(algo) : hashAlgoArb;
  return algoArb.chain((a) =>
    fc.uint8Array({ minLength: HASH_SIZES[a], maxLength: HASH_SIZES[a] }).map((b) => Hash.fromBytes(a, b)),
  );
}

export const hashPartArb: fc.Arbitrary<string> = fc
  .uint8Array({ minLength: 20, maxLength: 20 })
  .map((b) => encodeBase32(b));

/** Valid store path names, mostly short, sometimes at the 211-character limit. */
export const storePathNameArb: fc.Arbitrary<string> = fc.oneof(
  { weight: 8, arbitrary: fc.string({ unit: fc.constantFrom(...NAME_CHARS), minLength: 1, maxLength: 24 }) },
  { weight: 1, arbitrary: fc.string({ unit: fc.constantFrom(...NAME_CHARS), minLength: 200, maxLength: 211 }) },
);

export const storePathArb: fc.Arbitrary<string> = fc
  .tuple(hashPartArb, storePathNameArb)
  .map(([h, n]) => `${STORE_DIR}/${h}-${n}`);

export const drvPathArb: fc.Arbitrary<string> = fc
  .tuple(hashPartArb, fc.string({ unit: fc.constantFrom(...NAME_CHARS), minLength: 1, maxLength: 20 }))
  .map(([h, n]) => `${STORE_DIR}/${h}-${n}.drv`);

/** Text with the characters ATerm escapes, arbitrary Unicode and control characters. */
export const atermTextArb: fc.Arbitrary<string> = fc.string({
  unit: fc.oneof(
    fc.constantFrom('"', '\\', '\n', '\r', '\t', '$', '(', ')', ',', '[', ']', '\u0001', '\u007f'),
    fc.string({ unit: 'binary', minLength: 1, maxLength: 1 }),
    fc.string({ unit: 'grapheme-ascii', minLength: 1, maxLength: 1 }),
  ),
  maxLength: 40,
});

/** Strings Nix writes without escaping (output names, system): no quote or backslash. */
const rawTextArb = atermTextArb.map((s) => s.replace(/["\\]/g, ''));
const outputNameArb = fc.stringMatching(/^[a-z][a-z0-9_-]{0,7}$/);

const sortedUnique = (xs: string[]) => [...new Set(xs)].sort(compareUtf8);

function outputsArb(): fc.Arbitrary<Map<string, DerivationOutput>> {
  const names = fc.uniqueArray(outputNameArb, { minLength: 1, maxLength: 4 });
  return fc.oneof(
    // input-addressed
    names.chain((ns) => fc.tuple(...ns.map(() => storePathArb)).map((ps) => new Map(ns.map((n, i) => [n, { path: ps[i]!, hashAlgo: '', hash: '' }])))),
    // deferred
    names.map((ns) => new Map(ns.map((n) => [n, { path: '', hashAlgo: '', hash: '' }]))),
    // floating content-addressed
    fc.tuple(names, fc.constantFrom('r:sha256', 'sha256', 'r:sha512')).map(([ns, algo]) => new Map(ns.map((n) => [n, { path: '', hashAlgo: algo, hash: '' }]))),
    // fixed output: one output named out
    fc.tuple(storePathArb, fc.boolean(), hashArb()).map(([path, rec, h]) => new Map([['out', { path, hashAlgo: `${rec ? 'r:' : ''}${h.algo}`, hash: h.toBase16() }]])),
  );
}

/** Random valid derivations in canonical form (sorted sets, unique keys). */
export const derivationArb: fc.Arbitrary<Derivation> = fc
  .record({
    outputs: outputsArb(),
    inputDrvs: fc.uniqueArray(fc.tuple(drvPathArb, fc.uniqueArray(outputNameArb, { minLength: 1, maxLength: 3 })), {
      maxLength: 4,
      selector: ([p]) => p,
    }),
    inputSrcs: fc.uniqueArray(storePathArb, { maxLength: 4 }),
    system: rawTextArb,
    builder: atermTextArb,
    args: fc.array(atermTextArb, { maxLength: 5 }),
    env: fc.uniqueArray(fc.tuple(atermTextArb, atermTextArb), { maxLength: 8, selector: ([k]) => k }),
  })
  .map((r) => ({
    outputs: r.outputs,
    inputDrvs: new Map(r.inputDrvs.map(([p, outs]) => [p, sortedUnique(outs)])),
    inputSrcs: sortedUnique(r.inputSrcs),
    system: r.system,
    builder: r.builder,
    args: r.args,
    env: new Map(r.env),
  }));

const sigArb = fc
  .tuple(fc.stringMatching(/^[a-z][a-z0-9.-]{0,15}$/), fc.uint8Array({ minLength: 64, maxLength: 64 }))
  .map(([name, sig]) => `${name}:${Buffer.from(sig).toString('base64')}`);

const baseNameOf = (p: string) => p.slice(STORE_DIR.length + 1);

/** Random valid narinfos in canonical form (sorted, deduplicated references and signatures). */
export const narInfoArb: fc.Arbitrary<NarInfo> = fc
  .record(
    {
      storePath: storePathArb,
      url: fc.stringMatching(/^nar\/[0-9a-z]{10,52}\.nar(\.(xz|bz2|zst|br))?$/),
      compression: fc.constantFrom('xz', 'bzip2', 'zstd', 'br', 'none'),
      fileHash: hashArb('sha256'),
      fileSize: fc.nat(),
      narHash: hashArb('sha256'),
      narSize: fc.integer({ min: 1, max: Number.MAX_SAFE_INTEGER }),
      references: fc.uniqueArray(storePathArb.map(baseNameOf), { maxLength: 5 }),
      deriver: drvPathArb.map(baseNameOf),
      system: fc.constantFrom('x86_64-linux', 'aarch64-darwin'),
      sigs: fc.uniqueArray(sigArb, { maxLength: 3 }),
      ca: hashArb('sha256').map((h) => `fixed:r:${h.format('base32')}`),
    },
    { requiredKeys: ['storePath', 'url', 'compression', 'narHash', 'narSize', 'references', 'sigs'] },
  )
  .map((info) => ({
    ...info,
    references: [...info.references].sort(),
    sigs: [...info.sigs].sort(),
  }));
