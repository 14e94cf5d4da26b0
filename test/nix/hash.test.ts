import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import fc from 'fast-check';
import { beforeAll, describe, expect, it } from 'vitest';
import { NixFormatError } from '../../src/errors/index.ts';
import {
  compressHash,
  Hash,
  HASH_SIZES,
  type HashAlgo,
  type HashEncoding,
  hashBytes,
  hashFile,
  parseHash,
  parseSri,
  sha256,
} from '../../src/nix/hash.ts';
import { hashArb } from './arbitraries.ts';
import { nixFails, nixText, pseudoRandomBytes, tempDir } from './util.ts';

const ALGOS: HashAlgo[] = ['md5', 'sha1', 'sha256', 'sha512'];
const ENCODINGS: HashEncoding[] = ['base16', 'base32', 'base64', 'sri'];

const contents: Buffer[] = [
  Buffer.alloc(0),
  Buffer.from('hello'),
  Buffer.from('a line\nwith "quotes" and \\ and \t tabs\n'),
  Buffer.from(pseudoRandomBytes(1000, 7)),
  Buffer.from(pseudoRandomBytes(1 << 20, 11)),
];
let files: string[] = [];
/** nix's output per algorithm and encoding, one line per file. */
const nixFileHashes = new Map<string, string[]>();
let nixHashFlat: string[] = [];

const lines = (s: string) => s.trim().split('\n');

beforeAll(async () => {
  const dir = tempDir();
  files = contents.map((c, i) => {
    const f = join(dir, `f${i}`);
    writeFileSync(f, c);
    return f;
  });
  const jobs = ALGOS.flatMap((algo) =>
    ENCODINGS.map(async (enc) => {
      const out = await nixText('nix', ['hash', 'file', '--type', algo, `--${enc}`, ...files]);
      nixFileHashes.set(`${algo}/${enc}`, lines(out));
    }),
  );
  jobs.push(
    (async () => {
      nixHashFlat = await Promise.all(files.map(async (f) => (await nixText('nix-hash', ['--type', 'sha256', '--flat', f])).trim()));
    })(),
  );
  await Promise.all(jobs);
});

describe('hashes of file contents against nix hash file / nix-hash --flat', () => {
  it.each(ALGOS)('%s in every encoding', (algo) => {
    contents.forEach((c, i) => {
      const h = hashBytes(algo, c);
      expect(h.format('base16', false)).toBe(nixFileHashes.get(`${algo}/base16`)![i]);
      expect(h.format('base32', false)).toBe(nixFileHashes.get(`${algo}/base32`)![i]);
      expect(h.format('base64', false)).toBe(nixFileHashes.get(`${algo}/base64`)![i]);
      expect(h.toSri()).toBe(nixFileHashes.get(`${algo}/sri`)![i]);
    });
  });

  it('nix-hash --type sha256 --flat prints base16', () => {
    contents.forEach((c, i) => expect(sha256(c).toBase16()).toBe(nixHashFlat[i]));
  });

  it('hashFile streams to the same digest and size', async () => {
    for (const [i, f] of files.entries()) {
      const { hash, size } = await hashFile('sha256', f);
      expect(hash.toBase16()).toBe(nixHashFlat[i]);
      expect(size).toBe(contents[i]!.length);
    }
  });
});

describe('conversions against nix hash to-*', () => {
  it('parses every form Nix prints and prints what Nix prints', async () => {
    const hashes = contents.map((c) => sha256(c));
    const b16 = hashes.map((h) => h.toBase16());
    const [sri, b32, b64, back16, prefixed] = await Promise.all([
      nixText('nix', ['hash', 'to-sri', '--type', 'sha256', ...b16]),
      nixText('nix', ['hash', 'to-base32', ...hashes.map((h) => h.toSri())]),
      nixText('nix', ['hash', 'to-base64', ...hashes.map((h) => h.format('base32'))]),
      nixText('nix', ['hash', 'to-base16', ...hashes.map((h) => h.format('base64'))]),
      nixText('nix', ['hash', 'to-base32', ...hashes.map((h) => `sha256:${h.toBase16()}`)]),
    ]);
    hashes.forEach((h, i) => {
      expect(lines(sri)[i]).toBe(h.toSri());
      expect(lines(b32)[i]).toBe(h.toBase32());
      expect(lines(b64)[i]).toBe(h.toBase64());
      expect(lines(back16)[i]).toBe(h.toBase16());
      expect(lines(prefixed)[i]).toBe(h.toBase32());
      for (const s of [lines(sri)[i]!, `sha256:${lines(b32)[i]}`, `sha256:${lines(b64)[i]}`, `sha256:${lines(back16)[i]}`]) {
        expect(parseHash(s).equals(h)).toBe(true);
      }
      expect(parseHash(lines(b32)[i]!, 'sha256').equals(h)).toBe(true);
      expect(parseSri(lines(sri)[i]!).equals(h)).toBe(true);
    });
  });

  it('toString is the sha256:<base32> form of narinfo and fingerprints', () => {
    expect(String(sha256('hello'))).toBe(`sha256:${sha256('hello').toBase32()}`);
  });
});

describe('rejections, checked against Nix', () => {
  const good = sha256('x');
  const cases: [string, string, RegExp][] = [
    ['a wrong length', `sha256:${good.toBase16().slice(1)}`, /wrong length/],
    ['a non-hex base16 body', `sha256:${'g'.repeat(64)}`, /invalid base-16/],
    ['an unknown algorithm', `sha3:${good.toBase16()}`, /unknown hash algorithm|unknown hash type/],
    ['SRI with a short body', `sha256-${Buffer.alloc(31).toString('base64')}`, /invalid SRI/],
    ['a type that contradicts the expected one', `sha1:${good.toBase16()}`, /should have type/],
  ];
  it.each(cases)('rejects %s', async (_what, s, ours) => {
    expect(() => parseHash(s, 'sha256')).toThrow(NixFormatError);
    expect(() => parseHash(s, 'sha256')).toThrow(ours);
    await nixFails('nix', ['hash', 'to-base32', '--type', 'sha256', s]);
  });

  it('rejects base64 with junk that Buffer would silently skip', () => {
    const b64 = good.toBase64();
    expect(() => parseHash(`sha256-${b64.slice(0, 10)}!${b64.slice(11)}`)).toThrow(NixFormatError);
    expect(() => parseHash(`sha256:${b64.slice(0, 10)}*${b64.slice(11)}`)).toThrow(NixFormatError);
  });

  it('needs a type from somewhere', () => {
    expect(() => parseHash(good.toBase16())).toThrow(/does not include a type/);
    expect(parseHash(good.toBase16(), 'sha256').equals(good)).toBe(true);
  });

  it('rejects digests of the wrong size', () => {
    expect(() => Hash.fromBytes('sha256', new Uint8Array(20))).toThrow(NixFormatError);
  });
});

describe('compressHash', () => {
  it('XOR-folds byte i into position i mod size', () => {
    const h = sha256('fold me').bytes;
    const want = new Uint8Array(20);
    for (let i = 0; i < 32; i++) want[i % 20] = want[i % 20]! ^ h[i]!;
    expect(compressHash(h, 20)).toEqual(want);
    // The first 12 bytes are folded with bytes 20..31; the rest pass through.
    expect(compressHash(h, 20).subarray(12)).toEqual(h.subarray(12, 20));
  });

  it('is the identity (zero-padded) when the size is not smaller (property)', () => {
    fc.assert(
      fc.property(fc.uint8Array({ maxLength: 40 }), fc.nat(20), (b, extra) => {
        const out = compressHash(b, b.length + extra + 1);
        expect(out.subarray(0, b.length)).toEqual(b);
        expect(out.subarray(b.length).every((x) => x === 0)).toBe(true);
      }),
    );
  });
});

describe('round trips (property)', () => {
  it('parseHash(format(h, encoding)) == h for every algorithm and encoding', () => {
    fc.assert(
      fc.property(hashArb(), fc.constantFrom(...ENCODINGS), (h, enc) => {
        expect(parseHash(h.format(enc)).equals(h)).toBe(true);
        if (enc !== 'sri') expect(parseHash(h.format(enc, false), h.algo).equals(h)).toBe(true);
        expect(h.bytes).toHaveLength(HASH_SIZES[h.algo]);
      }),
    );
  });
});
