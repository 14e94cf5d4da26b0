import { mkdirSync, statSync, symlinkSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import fc from 'fast-check';
import { beforeAll, describe, expect, it } from 'vitest';
import { UnsafePathError } from '../../src/errors/index.ts';
import {
  MAX_SUPPORT_FILE_BYTES,
  parseBuildProducts,
  parseMetrics,
  readBuildNixSupport,
  readNixSupport,
  resolveInside,
} from '../../src/nix/nix-support.ts';
import { storePathName } from '../../src/nix/store-path.ts';
import { instantiate, MK_DRV, realise } from '../helpers/nix.ts';
import { nixText, tempDir } from './util.ts';

const PRODUCTS_SCRIPT = `
  /bin/mkdir -p $out/nix-support "$out/dir with space" $out/sub
  printf 'tarball contents' > $out/dist.tar.gz
  printf '<html>' > "$out/dir with space/index.html"
  printf 'inner' > $out/sub/file
  /bin/ln -s /etc/passwd $out/escape-link
  /bin/ln -s sub/file $out/inner-link
  /bin/ln -s .. $out/up-link
  /bin/cat > $out/nix-support/hydra-build-products <<EOF
file binary-dist $out/dist.tar.gz
doc manual "$out/dir with space" index.html
file source-dist $out/sub/../dist.tar.gz
file traversal $out/../etc/passwd
file absolute /etc/passwd
file escaping-link $out/escape-link
file inner-link $out/inner-link
file up-link $out/up-link
file relative sub/file
file missing $out/no-such-file
this line is not a product
nix-build out $out

EOF
  printf '  my-release-1.0 \\n' > $out/nix-support/hydra-release-name
  printf 'build.time 12.5 s\\nsize 1024\\nlonely\\nnotnum abc\\nbuild.time 13 s\\nratio -1.5e-3\\n' > $out/nix-support/hydra-metrics
`;

let products = '';
let failedOut = '';
let multi: { name: string; path: string }[] = [];
let crossRef: { name: string; path: string }[] = [];

beforeAll(async () => {
  const expr = `let ${MK_DRV} in {
    products = mk { name = "ns-products"; script = ${JSON.stringify(PRODUCTS_SCRIPT)}; };
    failed = mk { name = "ns-failed"; script = "/bin/mkdir -p $out/nix-support; : > $out/nix-support/failed"; };
    multi = mk { name = "ns-multi"; script = "/bin/mkdir $out $doc; echo bin > $bin"; extra = { outputs = [ "out" "bin" "doc" ]; }; };
    crossRef = mk { name = "ns-cross"; extra = { outputs = [ "out" "doc" ]; }; script = ''
      /bin/mkdir -p $out $doc/nix-support
      printf manual > $out/manual.html
      echo "doc manual $out/manual.html" > $doc/nix-support/hydra-build-products
      echo "a.metric 1" > $doc/nix-support/hydra-metrics
      ''; };
  }`;
  const [p, f, m, c] = await instantiate(expr, ['products', 'failed', 'multi', 'crossRef']);
  const [productsOut, failedOutput] = await realise([p!, f!]);
  products = productsOut!;
  failedOut = failedOutput!;
  const multiOuts = await realise([`${m}!out`, `${m}!bin`, `${m}!doc`]);
  multi = ['out', 'bin', 'doc'].map((name, i) => ({ name, path: multiOuts[i]! }));
  const crossOuts = await realise([`${c}!out`, `${c}!doc`]);
  crossRef = ['out', 'doc'].map((name, i) => ({ name, path: crossOuts[i]! }));
});

describe('a real build output', () => {
  it('lists the safe products with size and sha256 as nix-hash computes them', async () => {
    const r = await readNixSupport(products);
    expect(r.explicitProducts).toBe(true);
    const byType = new Map(r.products.map((p) => [`${p.type}/${p.subtype}`, p]));
    expect([...byType.keys()]).toEqual(['file/binary-dist', 'doc/manual', 'file/source-dist', 'file/inner-link', 'nix-build/out']);

    const dist = byType.get('file/binary-dist')!;
    expect(dist.path).toBe(`${products}/dist.tar.gz`);
    expect(dist.name).toBe('dist.tar.gz');
    expect(dist.defaultPath).toBe('');
    expect(dist.fileSize).toBe(statSync(dist.path).size);
    expect(dist.sha256hash).toBe((await nixText('nix-hash', ['--type', 'sha256', '--flat', dist.path])).trim());

    const manual = byType.get('doc/manual')!;
    expect(manual.path).toBe(`${products}/dir with space`);
    expect(manual.defaultPath).toBe('index.html');
    expect(manual.fileSize).toBeNull();
    expect(manual.sha256hash).toBeNull();

    // `..` that stays inside is resolved, not rejected.
    expect(byType.get('file/source-dist')!.path).toBe(`${products}/dist.tar.gz`);
    // A symlink to a file inside the output: the target's size and hash.
    const link = byType.get('file/inner-link')!;
    expect(link.sha256hash).toBe((await nixText('nix-hash', ['--type', 'sha256', '--flat', `${products}/sub/file`])).trim());
    // The output itself: empty name, as Hydra stores it.
    expect(byType.get('nix-build/out')!.name).toBe('');
  });

  it('rejects traversal, absolute paths elsewhere, escaping symlinks, relative and missing paths', async () => {
    const r = await readNixSupport(products);
    const reasons = new Map(r.rejected.map((x) => [x.text.replace(products, '$out'), x.reason]));
    expect(reasons.get('$out/../etc/passwd')).toBe('outside the build output');
    expect(reasons.get('/etc/passwd')).toBe('outside the build output');
    expect(reasons.get('$out/escape-link')).toBe('a symlink leads outside the build output');
    expect(reasons.get('$out/up-link')).toBe('a symlink leads outside the build output');
    expect(reasons.get('sub/file')).toBe('not an absolute path');
    expect(reasons.get('$out/no-such-file')).toBe('does not exist');
    expect(r.rejected.some((x) => x.text === 'this line is not a product' && x.line === 11)).toBe(true);
    expect(r.rejected.filter((x) => x.file === 'hydra-build-products')).toHaveLength(7);
  });

  it('reads the release name and metrics', async () => {
    const r = await readNixSupport(products);
    expect(r.releaseName).toBe('my-release-1.0');
    expect(r.metrics).toEqual([
      { name: 'size', value: 1024, unit: '' },
      { name: 'build.time', value: 13, unit: 's' },
      { name: 'ratio', value: -0.0015, unit: '' },
    ]);
    expect(r.rejected.filter((x) => x.file === 'hydra-metrics').map((x) => x.text)).toEqual(['lonely', 'notnum abc']);
    expect(r.failed).toBe(false);
  });

  it('sees nix-support/failed', async () => {
    const r = await readNixSupport(failedOut);
    expect(r.failed).toBe(true);
    expect(r.explicitProducts).toBe(false);
    expect(r.products).toEqual([]);
  });

  it('without hydra-build-products, every directory output is a nix-build product', async () => {
    const r = await readBuildNixSupport(multi);
    expect(r.products).toEqual([
      { type: 'nix-build', subtype: '', path: multi[0]!.path, name: 'ns-multi', defaultPath: '', fileSize: null, sha256hash: null },
      { type: 'nix-build', subtype: 'doc', path: multi[2]!.path, name: 'ns-multi-doc', defaultPath: '', fileSize: null, sha256hash: null },
    ]);
    expect(storePathName(multi[2]!.path)).toBe('ns-multi-doc');
  });

  it('lets one output list products in another output of the same build', async () => {
    const r = await readBuildNixSupport(crossRef);
    expect(r.products.map((p) => p.path)).toEqual([`${crossRef[0]!.path}/manual.html`]);
    expect(r.products[0]!.fileSize).toBe('manual'.length);
    expect(r.metrics).toEqual([{ name: 'a.metric', value: 1, unit: '' }]);
    // A single output on its own may not point into its sibling.
    const alone = await readNixSupport(crossRef[1]!.path);
    expect(alone.products).toEqual([]);
    expect(alone.rejected[0]!.reason).toBe('outside the build output');
  });
});

describe('crafted directories', () => {
  let root = '';
  let out = '';
  beforeAll(() => {
    root = tempDir();
    out = join(root, 'out');
    mkdirSync(join(out, 'nix-support'), { recursive: true });
    mkdirSync(join(root, 'secret'));
    writeFileSync(join(root, 'secret', 'key'), 'secret');
    writeFileSync(join(root, 'sibling.txt'), 'sibling');
    symlinkSync(join(root, 'secret'), join(out, 'link'));
    writeFileSync(join(out, 'ok.txt'), 'ok');
  });

  it('resolveInside throws UnsafePathError with a reason', async () => {
    await expect(resolveInside([out], `${out}/../sibling.txt`)).rejects.toThrow(UnsafePathError);
    await expect(resolveInside([out], `${out}/link/key`)).rejects.toMatchObject({ code: 'UNSAFE_PATH', reason: 'a symlink leads outside the build output' });
    await expect(resolveInside([out], `${out}x/../out/ok.txt`)).resolves.toMatchObject({ path: `${out}/ok.txt` });
    await expect(resolveInside([`${out}/`], `${out}/ok.txt/`)).resolves.toMatchObject({ path: `${out}/ok.txt` });
    await expect(resolveInside([out], `${out}2/ok.txt`)).rejects.toThrow('outside the build output');
  });

  it('does not follow a symlinked nix-support directory or products file', async () => {
    const a = join(root, 'a');
    mkdirSync(a);
    symlinkSync(join(out, 'nix-support'), join(a, 'nix-support'));
    writeFileSync(join(out, 'nix-support', 'hydra-build-products'), `file x ${out}/ok.txt\n`);
    expect((await readNixSupport(a)).rejected.map((x) => x.reason)).toEqual(['not a directory']);

    const b = join(root, 'b');
    mkdirSync(join(b, 'nix-support'), { recursive: true });
    symlinkSync(join(out, 'nix-support', 'hydra-build-products'), join(b, 'nix-support', 'hydra-build-products'));
    const r = await readNixSupport(b);
    expect(r.explicitProducts).toBe(false);
    expect(r.rejected.map((x) => x.reason)).toEqual(['is a symlink']);
  });

  it('ignores an oversized file', async () => {
    const c = join(root, 'c');
    mkdirSync(join(c, 'nix-support'), { recursive: true });
    writeFileSync(join(c, 'nix-support', 'hydra-metrics'), Buffer.alloc(MAX_SUPPORT_FILE_BYTES + 1, 0x61));
    const r = await readNixSupport(c);
    expect(r.metrics).toEqual([]);
    expect(r.rejected[0]!.reason).toMatch(/larger than/);
  });

  it('an output without nix-support has nothing', async () => {
    const r = await readNixSupport(join(root, 'secret'));
    expect(r).toEqual({ explicitProducts: false, products: [], releaseName: null, metrics: [], failed: false, rejected: [] });
  });
});

describe('parsers (property)', () => {
  const word = fc.stringMatching(/^[A-Za-z0-9_-]{1,12}$/);
  const plainPath = fc.stringMatching(/^\/[A-Za-z0-9._/-]{0,30}$/);
  const spacedPath = fc.stringMatching(/^\/[A-Za-z0-9 ._/-]{0,30}$/);
  it('product lines parse back to their fields', () => {
    fc.assert(
      fc.property(
        fc.array(fc.tuple(word, word, fc.oneof(plainPath, spacedPath), fc.option(fc.stringMatching(/^[^\s]{1,12}$/), { nil: undefined }), fc.boolean()), { maxLength: 6 }),
        (lines) => {
          const text = lines
            .map(([t, s, p, d, quote]) => `${t} ${s} ${quote || p.includes(' ') ? `"${p}"` : p}${d === undefined ? '' : `\t${d}`}`)
            .join('\n');
          const { entries, malformed } = parseBuildProducts(text);
          expect(malformed).toEqual([]);
          expect(entries.map((e) => [e.type, e.subtype, e.path, e.defaultPath])).toEqual(lines.map(([t, s, p, d]) => [t, s, p, d ?? '']));
        },
      ),
    );
  });

  it('metric lines parse back; the last value per name wins', () => {
    fc.assert(
      fc.property(fc.array(fc.tuple(word, fc.double({ noNaN: true, noDefaultInfinity: true }), fc.option(word, { nil: undefined })), { maxLength: 8 }), (ms) => {
        const num = (v: number) => (Object.is(v, -0) ? '-0' : String(v));
        const text = ms.map(([n, v, u]) => `${n} ${num(v)}${u === undefined ? '' : ` ${u}`}`).join('\n');
        const { metrics, malformed } = parseMetrics(text);
        expect(malformed).toEqual([]);
        const last = new Map<string, { name: string; value: number; unit: string }>();
        for (const [n, v, u] of ms) {
          last.delete(n);
          last.set(n, { name: n, value: v, unit: u ?? '' });
        }
        expect(metrics).toEqual([...last.values()]);
      }),
    );
  });
});
