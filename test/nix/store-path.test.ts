import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import fc from 'fast-check';
import { beforeAll, describe, expect, it } from 'vitest';
import { NixFormatError } from '../../src/errors/index.ts';
import { type HashAlgo, hashBytes, parseHash, sha256 } from '../../src/nix/hash.ts';
import {
  isStorePath,
  isValidStorePathName,
  makeFixedOutputPath,
  makeStorePath,
  makeTextPath,
  parseStorePath,
  parseStorePathBaseName,
  storePathBaseName,
  storePathHashPart,
  storePathName,
  toStorePath,
} from '../../src/nix/store-path.ts';
import { instantiate, MK_DRV, realise, runNixLines } from '../helpers/nix.ts';
import { storePathArb, storePathNameArb } from './arbitraries.ts';
import { nixJson, nixText, tempDir } from './util.ts';

interface PathInfo {
  path: string;
  narHash: string;
  narSize: number;
  references: string[];
  ca?: string;
}

const references = async (p: string) => runNixLines('nix-store', ['--query', '--references', p]);
const pathInfo = async (p: string) => (await nixJson<PathInfo[]>('nix', ['path-info', '--json', p]))[0]!;

describe('text paths (builtins.toFile) against nix-instantiate', () => {
  let paths: string[] = [];
  beforeAll(async () => {
    const expr = `
      let a = builtins.toFile "a.txt" "hello from hydrant";
          b = builtins.toFile "b.txt" "refers to \${a}";
          c = builtins.toFile "c.txt" "two: \${b} and \${a}\\n";
      in [ a b c ]`;
    paths = JSON.parse(await nixText('nix-instantiate', ['--eval', '--read-write-mode', '--strict', '--json', '-E', expr])) as string[];
  });

  it('computes each path from its contents and its references', async () => {
    expect(paths).toHaveLength(3);
    for (const p of paths) {
      const refs = await references(p);
      const name = storePathName(p);
      expect(makeTextPath(name, sha256(readFileSync(p)), refs)).toBe(p);
    }
  });

  it('puts references in sorted order regardless of the order given', async () => {
    const c = paths[2]!;
    const refs = await references(c);
    expect(refs).toHaveLength(2);
    expect(makeTextPath('c.txt', sha256(readFileSync(c)), [...refs].reverse())).toBe(c);
    expect(makeTextPath('c.txt', sha256(readFileSync(c)), [])).not.toBe(c);
  });
});

describe('content-addressed paths (nix-store --add, --add-fixed)', () => {
  let dir = '';
  let file = '';
  let tree = '';
  beforeAll(() => {
    dir = tempDir();
    file = join(dir, 'data.bin');
    writeFileSync(file, `some content ${'x'.repeat(100)}\n`);
    tree = join(dir, 'tree');
    mkdirSync(join(tree, 'sub'), { recursive: true });
    writeFileSync(join(tree, 'sub', 'f'), 'inner file');
  });

  it('nix-store --add of a file and of a directory: source path over the NAR hash', async () => {
    for (const p of [file, tree]) {
      const [added] = await runNixLines('nix-store', ['--add', p]);
      const narHex = (await nixText('nix-hash', ['--type', 'sha256', p])).trim();
      const name = p.split('/').pop()!;
      expect(makeFixedOutputPath('recursive', parseHash(narHex, 'sha256'), name)).toBe(added);
      // The registered content address agrees too.
      const info = await pathInfo(added!);
      expect(info.ca).toBe(`fixed:r:${parseHash(narHex, 'sha256').format('base32')}`);
    }
  });

  const algos: HashAlgo[] = ['md5', 'sha1', 'sha256', 'sha512'];
  it.each(algos)('nix-store --add-fixed %s, flat and recursive', async (algo) => {
    const [flat] = await runNixLines('nix-store', ['--add-fixed', algo, file]);
    expect(makeFixedOutputPath('flat', hashBytes(algo, readFileSync(file)), 'data.bin')).toBe(flat);
    const [rec] = await runNixLines('nix-store', ['--add-fixed', '--recursive', algo, file]);
    const narHash = parseHash((await nixText('nix-hash', ['--type', algo, file])).trim(), algo);
    expect(makeFixedOutputPath('recursive', narHash, 'data.bin')).toBe(rec);
  });

  it('refuses references on paths that cannot carry them', () => {
    expect(() => makeFixedOutputPath('flat', sha256('x'), 'x', [`/nix/store/${'0'.repeat(32)}-y`])).toThrow(NixFormatError);
  });
});

describe('floating CA outputs with references and self-references', () => {
  const infos: PathInfo[] = [];
  beforeAll(async () => {
    const expr = `let ${MK_DRV}
      ca = extra: extra // { __contentAddressed = true; outputHashMode = "recursive"; outputHashAlgo = "sha256"; };
      dep = mk { name = "sp-ca-dep"; script = "echo dep > $out"; extra = ca {}; };
      in {
        refs = mk { name = "sp-ca-refs"; script = "echo \${dep} > $out"; deps = [ dep ]; extra = ca {}; };
        self = mk { name = "sp-ca-self"; script = "/bin/mkdir $out; echo $out > $out/me"; extra = ca {}; };
      }`;
    const outs = await realise(await instantiate(expr, ['refs', 'self']));
    for (const o of outs) infos.push(await pathInfo(o));
  });

  it('is the source path over the content address, with references in the type', () => {
    for (const info of infos) {
      expect(info.ca).toMatch(/^fixed:r:sha256:/);
      const hash = parseHash(info.ca!.slice('fixed:r:'.length));
      const self = info.references.includes(info.path);
      const others = info.references.filter((r) => r !== info.path);
      expect(makeFixedOutputPath('recursive', hash, storePathName(info.path), others, self)).toBe(info.path);
    }
    expect(infos.some((i) => i.references.includes(i.path))).toBe(true);
    expect(infos.some((i) => i.references.some((r) => r !== i.path))).toBe(true);
  });
});

describe('store path names, checked against Nix 2.8', () => {
  const names = ['ok-name_1.2+3?x=y', '.hidden', '..', '.-x', 'a b', 'ünï', 'semi;colon', 'x'.repeat(211), 'x'.repeat(212), 'tab\tname'];
  it('accepts a name exactly when builtins.toFile does (including names starting with a dot)', async () => {
    const verdicts = await Promise.all(
      names.map(async (name) => {
        try {
          const made = JSON.parse(await nixText('nix-instantiate', ['--eval', '--json', '-E', `builtins.toFile ${JSON.stringify(name)} "x"`]));
          return { name, nix: true, made: made as string };
        } catch {
          return { name, nix: false, made: '' };
        }
      }),
    );
    for (const v of verdicts) {
      expect(isValidStorePathName(v.name), JSON.stringify(v.name)).toBe(v.nix);
      if (v.nix) expect(storePathName(v.made)).toBe(v.name);
    }
    expect(verdicts.filter((v) => v.nix).map((v) => v.name)).toContain('..');
  });
});

describe('parsing', () => {
  const hash = '0'.repeat(32);
  it('splits real paths into hash part, name and base name', async () => {
    const [p] = await runNixLines('nix-store', ['--add', import.meta.filename]);
    const sp = parseStorePath(p!);
    expect(sp.hashPart).toBe(p!.slice(11, 43));
    expect(sp.name).toBe('store-path.test.ts');
    expect(sp.baseName).toBe(`${sp.hashPart}-store-path.test.ts`);
    expect(storePathHashPart(p!)).toBe(sp.hashPart);
    expect(storePathBaseName(p!)).toBe(sp.baseName);
    expect(toStorePath(`${p}/some/file`).path).toBe(p);
  });

  it.each([
    ['not in the store', `/tmp/${hash}-x`],
    ['a sub-path', `/nix/store/${hash}-x/bin`],
    ['a trailing slash', `/nix/store/${hash}-x/`],
    ['a short hash', `/nix/store/${hash.slice(1)}-x`],
    ['an invalid base32 character', `/nix/store/${'e'.repeat(32)}-x`],
    ['no name', `/nix/store/${hash}-`],
    ['no dash', `/nix/store/${hash}x`],
    ['a bad name character', `/nix/store/${hash}-a b`],
  ])('rejects %s', (_what, p) => {
    expect(() => parseStorePath(p)).toThrow(NixFormatError);
    expect(isStorePath(p)).toBe(false);
  });

  it('supports another store directory', () => {
    expect(parseStorePath(`/other/store/${hash}-x`, '/other/store').name).toBe('x');
    const p = makeStorePath('text', sha256('x'), 'x', '/other/store');
    expect(p.startsWith('/other/store/')).toBe(true);
    expect(p).not.toBe(makeStorePath('text', sha256('x'), 'x').replace('/nix/store', '/other/store'));
  });
});

describe('properties', () => {
  it('made paths parse back with the given name', () => {
    fc.assert(
      fc.property(fc.string(), storePathNameArb, (content, name) => {
        const p = makeStorePath('output:out', sha256(content), name);
        const sp = parseStorePath(p);
        expect(sp.name).toBe(name);
        expect(sp.path).toBe(p);
        expect(parseStorePathBaseName(sp.baseName).path).toBe(p);
      }),
    );
  });

  it('any generated path parses and round-trips', () => {
    fc.assert(
      fc.property(storePathArb, (p) => {
        const sp = parseStorePath(p);
        expect(`${sp.storeDir}/${sp.hashPart}-${sp.name}`).toBe(p);
      }),
    );
  });

  it('the hex string form and the Hash form of the inner hash agree', () => {
    fc.assert(
      fc.property(fc.string(), storePathNameArb, (content, name) => {
        const h = sha256(content);
        expect(makeStorePath('source', h.toBase16(), name)).toBe(makeStorePath('source', h, name));
      }),
    );
  });
});
