import { readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import fc from 'fast-check';
import { beforeAll, describe, expect, it } from 'vitest';
import { NixFormatError } from '../../src/errors/index.ts';
import { hashFile, parseSri } from '../../src/nix/hash.ts';
import { narInfoReferencePaths, parseNarInfo, serializeNarInfo } from '../../src/nix/narinfo.ts';
import { storePathBaseName } from '../../src/nix/store-path.ts';
import { instantiate, MK_DRV, realise } from '../helpers/nix.ts';
import type { NixPathInfo } from '../cache/fixtures.ts';
import { narInfoArb } from './arbitraries.ts';
import { nixJson, nixText, tempDir } from './util.ts';
import { assertRoundTrips } from '../helpers/round-trip.ts';

/** `nix path-info --json` with signatures. */
type PathInfo = NixPathInfo & { signatures?: string[] };

/** narinfo files written by `nix copy --to file://…`, per cache (compression). */
const caches: { dir: string; compression: string; files: Map<string, string> }[] = [];
const infos = new Map<string, PathInfo>();

beforeAll(async () => {
  const expr = `let ${MK_DRV}
    a = mk { name = "ni-a"; script = "echo a > $out"; };
    b = mk { name = "ni-b"; script = "/bin/mkdir $out; echo \${a} > $out/ref; echo x > $out/x"; deps = [ a ]; };
    in {
      inherit a b;
      ca = mk { name = "ni-ca"; script = "echo \${b} > $out"; deps = [ b ];
        extra = { __contentAddressed = true; outputHashMode = "recursive"; outputHashAlgo = "sha256"; }; };
    }`;
  const outs = await realise(await instantiate(expr, ['a', 'b', 'ca']));
  // Give one path signatures (two keys) so that Sig lines appear.
  const keyDir = tempDir();
  const run = Math.random().toString(36).slice(2, 8);
  for (const k of [`ni-key-2-${run}`, `ni-key-1-${run}`]) {
    await nixText('nix-store', ['--generate-binary-cache-key', k, join(keyDir, `${k}.sk`), join(keyDir, `${k}.pk`)]);
    await nixText('nix', ['store', 'sign', '--key-file', join(keyDir, `${k}.sk`), outs[1]!]);
  }
  for (const info of await nixJson<PathInfo[]>('nix', ['path-info', '--json', ...outs])) infos.set(info.path, info);
  for (const compression of ['xz', 'none', 'bzip2']) {
    const dir = tempDir();
    await nixText('nix', ['copy', '--to', `file://${dir}?compression=${compression}`, ...outs]);
    const files = new Map<string, string>();
    for (const f of readdirSync(dir).filter((n) => n.endsWith('.narinfo'))) files.set(f, readFileSync(join(dir, f), 'utf8'));
    caches.push({ dir, compression, files });
  }
});

describe('narinfo files written by nix copy', () => {
  it('there are three per cache', () => {
    for (const c of caches) expect(c.files.size).toBe(3);
  });

  it('serialize(parse(text)) is byte-identical', () => {
    for (const c of caches) for (const text of c.files.values()) expect(serializeNarInfo(parseNarInfo(text))).toBe(text);
  });

  it('agrees with nix path-info --json', () => {
    for (const c of caches) {
      for (const [file, text] of c.files) {
        const ni = parseNarInfo(text, file);
        const info = infos.get(ni.storePath)!;
        expect(info).toBeDefined();
        expect(file).toBe(`${storePathBaseName(ni.storePath).slice(0, 32)}.narinfo`);
        expect(ni.narHash.equals(parseSri(info.narHash))).toBe(true);
        expect(ni.narSize).toBe(info.narSize);
        expect(narInfoReferencePaths(ni)).toEqual(info.references);
        expect(ni.deriver).toBe(info.deriver && storePathBaseName(info.deriver));
        expect(ni.ca).toBe(info.ca);
        expect([...ni.sigs].sort()).toEqual([...(info.signatures ?? [])].sort());
        expect(ni.compression).toBe(c.compression);
      }
    }
    const all = caches.flatMap((c) => [...c.files.values()].map((t) => parseNarInfo(t)));
    expect(all.some((ni) => ni.sigs.length >= 2)).toBe(true);
    expect(all.some((ni) => ni.ca !== undefined)).toBe(true);
    expect(all.some((ni) => ni.references.length > 0)).toBe(true);
  });

  it('FileHash and FileSize describe the file at URL', async () => {
    for (const c of caches) {
      for (const text of c.files.values()) {
        const ni = parseNarInfo(text);
        const { hash, size } = await hashFile('sha256', join(c.dir, ni.url));
        expect(ni.fileHash!.equals(hash)).toBe(true);
        expect(ni.fileSize).toBe(size);
      }
    }
  });
});

describe('malformed narinfo', () => {
  let good = '';
  beforeAll(() => {
    good = [...caches[0]!.files.values()].find((t) => /^References: \S/m.test(t))!;
  });
  const cases: [string, (s: string) => string, RegExp][] = [
    ['a missing StorePath', (s) => s.replace(/^StorePath: .*\n/m, ''), /missing StorePath/],
    ['a missing NarHash', (s) => s.replace(/^NarHash: .*\n/m, ''), /missing NarHash/],
    ['a missing URL', (s) => s.replace(/^URL: .*\n/m, ''), /missing URL/],
    ['a zero NarSize', (s) => s.replace(/^NarSize: .*$/m, 'NarSize: 0'), /NarSize is 0/],
    ['a negative NarSize', (s) => s.replace(/^NarSize: .*$/m, 'NarSize: -5'), /NarSize/],
    ['a bad NarHash', (s) => s.replace(/^NarHash: .*$/m, 'NarHash: sha256:xyz'), /bad NarHash/],
    ['a bad reference', (s) => s.replace(/^References: .*$/m, 'References: not-a-path'), /bad reference/],
    ['a bad StorePath', (s) => s.replace(/^StorePath: .*$/m, 'StorePath: /tmp/x'), /bad StorePath/],
    ['a repeated field', (s) => `${s}NarSize: 5\n`, /appears twice/],
    ['a line without a colon', (s) => `${s}garbage\n`, /not 'Name: value'/],
    ['no final newline', (s) => s.slice(0, -1), /newline/],
    ['a bad CA', (s) => `${s}CA: whatever\n`, /bad CA/],
  ];
  it.each(cases)('rejects %s', (_what, mutate, why) => {
    expect(() => parseNarInfo(mutate(good))).toThrow(NixFormatError);
    expect(() => parseNarInfo(mutate(good))).toThrow(why);
  });

  it('ignores unknown fields and defaults Compression to bzip2, as Nix does', () => {
    const ni = parseNarInfo(`${good.replace(/^Compression: .*\n/m, '')}X-Custom: 1\n`);
    expect(ni.compression).toBe('bzip2');
    expect(parseNarInfo(good.replace(/^Deriver: .*$/m, 'Deriver: unknown-deriver')).deriver).toBeUndefined();
  });
});

describe('round trips (property)', () => {
  it('parse(serialize(info)) == info', () => {
    assertRoundTrips(narInfoArb, serializeNarInfo, parseNarInfo);
  });

  it('serialization sorts references and signatures', () => {
    fc.assert(
      fc.property(narInfoArb, (info) => {
        const shuffled = { ...info, references: [...info.references].reverse(), sigs: [...info.sigs].reverse() };
        expect(serializeNarInfo(shuffled)).toBe(serializeNarInfo(info));
      }),
    );
  });
});
