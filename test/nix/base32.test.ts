import fc from 'fast-check';
import { beforeAll, describe, expect, it } from 'vitest';
import { NixFormatError } from '../../src/errors/index.ts';
import {
  BASE32_ALPHABET,
  base32DecodedLength,
  base32EncodedLength,
  decodeBase32,
  encodeBase32,
  isBase32,
} from '../../src/nix/base32.ts';
import { HASH_SIZES, type HashAlgo } from '../../src/nix/hash.ts';
import { nixFails, nixText, pseudoRandomBytes } from './util.ts';

const ALGOS: HashAlgo[] = ['md5', 'sha1', 'sha256', 'sha512'];
const hex = (b: Uint8Array) => Buffer.from(b).toString('hex');

/** Golden base32 strings from `nix hash to-base32`, per algorithm, for pseudo-random digests. */
const golden = new Map<HashAlgo, { bytes: Uint8Array; base32: string }[]>();

beforeAll(async () => {
  await Promise.all(
    ALGOS.map(async (algo, k) => {
      const size = HASH_SIZES[algo];
      const inputs: Uint8Array[] = [new Uint8Array(size), new Uint8Array(size).fill(0xff), Uint8Array.from({ length: size }, (_, i) => i)];
      for (let i = 0; i < 30; i++) inputs.push(pseudoRandomBytes(size, 1000 * k + i + 1));
      const out = (await nixText('nix', ['hash', 'to-base32', '--type', algo, ...inputs.map(hex)])).trim().split('\n');
      expect(out).toHaveLength(inputs.length);
      golden.set(algo, inputs.map((bytes, i) => ({ bytes, base32: out[i]! })));
    }),
  );
});

describe('Nix base32 against nix hash to-base32', () => {
  it.each(ALGOS)('encodes %s digests exactly as Nix does', (algo) => {
    for (const { bytes, base32 } of golden.get(algo)!) expect(encodeBase32(bytes)).toBe(base32);
  });

  it.each(ALGOS)('decodes what Nix printed for %s back to the bytes', (algo) => {
    for (const { bytes, base32 } of golden.get(algo)!) expect(decodeBase32(base32)).toEqual(bytes);
  });

  it('has the lengths Nix uses (32 for store path hash parts, 52 for sha256)', () => {
    expect(base32EncodedLength(20)).toBe(32);
    expect(base32EncodedLength(32)).toBe(52);
    expect(base32EncodedLength(64)).toBe(103);
    expect(golden.get('sha256')![0]!.base32).toHaveLength(52);
  });
});

describe('rejections, checked against Nix', () => {
  const sha256Len = base32EncodedLength(32);
  // 52 chars carry 260 bits for 256: the leading character may only be 0 or 1.
  const cases: [string, string][] = [
    ['non-zero padding bits', `2${'0'.repeat(sha256Len - 1)}`],
    ['the letter e', `e${'0'.repeat(sha256Len - 1)}`],
    ['the letter u', `${'0'.repeat(sha256Len - 1)}u`],
    ['an upper-case letter', `${'0'.repeat(sha256Len - 1)}A`],
  ];

  it.each(cases)('rejects %s like Nix', async (_what, s) => {
    expect(() => decodeBase32(s)).toThrow(NixFormatError);
    expect(isBase32(s)).toBe(false);
    const stderr = await nixFails('nix', ['hash', 'to-base16', '--type', 'sha256', s]);
    expect(stderr).toMatch(/invalid base-32 hash/);
  });

  it('rejects lengths no byte count encodes to', () => {
    for (const len of [1, 3, 6, 9, 11]) {
      expect(base32DecodedLength(len)).toBeNull();
      expect(() => decodeBase32('0'.repeat(len))).toThrow(NixFormatError);
    }
  });

  it('accepts the padding limit exactly', () => {
    expect(decodeBase32(`1${'0'.repeat(sha256Len - 1)}`)[31]).toBe(0x80);
  });

  it('errors carry the stable code', () => {
    try {
      decodeBase32('!!');
      expect.unreachable();
    } catch (e) {
      expect((e as NixFormatError).code).toBe('NIX_FORMAT');
    }
  });
});

describe('round trips (property)', () => {
  it('decode(encode(bytes)) == bytes for any length', () => {
    fc.assert(
      fc.property(fc.uint8Array({ maxLength: 100 }), (b) => {
        const s = encodeBase32(b);
        expect(s).toHaveLength(base32EncodedLength(b.length));
        expect(isBase32(s)).toBe(true);
        expect(decodeBase32(s)).toEqual(b);
      }),
    );
  });

  it('every valid string has exactly one decoding and re-encodes to itself', () => {
    fc.assert(
      fc.property(fc.uint8Array({ maxLength: 64 }), fc.nat(), (b, k) => {
        const s = encodeBase32(b);
        expect(encodeBase32(decodeBase32(s))).toBe(s);
        if (s.length > 0) {
          // Changing any one character changes the bytes (or makes it invalid).
          const i = k % s.length;
          const c = BASE32_ALPHABET[k % 32]!;
          const t = s.slice(0, i) + c + s.slice(i + 1);
          if (t !== s && isBase32(t)) expect(decodeBase32(t)).not.toEqual(b);
        }
      }),
    );
  });
});
