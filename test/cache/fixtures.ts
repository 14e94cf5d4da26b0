/** Real store paths, keys and Nix invocations shared by the binary cache tests. */
import { execFile } from 'node:child_process';
import { mkdtempSync, readdirSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, relative } from 'node:path';
import { promisify } from 'node:util';
import { NixCommandError } from '../../src/errors/index.ts';
import type { CacheCompression } from '../../src/cache/store-uri.ts';
import { MK_DRV, runNix, runNixLines } from '../helpers/nix.ts';

export { runNix, runNixLines };

export function tempDir(prefix: string): string {
  return mkdtempSync(join(tmpdir(), prefix));
}

/**
 * Derivations covering what a NAR can hold: nested directories, an empty
 * one, executables, symlinks (relative, absolute, dangling), odd names; a
 * path referring to another; two outputs where one refers to the other; a
 * self-reference; a content-addressed output with a reference.
 */
export const FIXTURE_EXPR = `
let
  ${MK_DRV}
  tree = mk { name = "hydrant-cache-tree"; script = ''
    /bin/mkdir -p $out/a/b/c $out/empty
    echo building tree
    echo hello > $out/a/b/c/file
    echo '#!/bin/sh' > $out/a/run
    /bin/chmod +x $out/a/run
    echo spaced > "$out/a/sp ace"
    echo unicode > "$out/a/\u00fc-\u00e9"
    /bin/ln -s b/c/file $out/a/rel-link
    /bin/ln -s /nonexistent/target $out/dangling
    i=0; while [ $i -lt 200 ]; do echo "line $i of a compressible file" >> $out/a/big; i=$((i+1)); done
  ''; };
in rec {
  inherit tree;
  user = mk { name = "hydrant-cache-user"; deps = [ tree ]; script = ''
    /bin/mkdir $out
    echo ${'$'}{tree}/a/run > $out/uses-tree
    /bin/ln -s ${'$'}{tree}/a $out/tree-link
  ''; };
  multi = mk { name = "hydrant-cache-multi"; extra = { outputs = [ "out" "dev" ]; }; script = ''
    /bin/mkdir $out $dev
    echo lib > $out/lib
    echo $out > $dev/include
  ''; };
  self = mk { name = "hydrant-cache-self"; script = "/bin/mkdir $out; echo $out > $out/me"; };
  ca = mk { name = "hydrant-cache-ca"; deps = [ tree ]; script = "echo ${'$'}{tree} > $out";
    extra = { __contentAddressed = true; outputHashMode = "recursive"; outputHashAlgo = "sha256"; }; };
  single = mk { name = "hydrant-cache-single-file"; script = "echo just a file > $out"; };
}
`;

export interface Fixtures {
  exprFile: string;
  drvs: Record<'tree' | 'user' | 'multi' | 'self' | 'ca' | 'single', string>;
  paths: { tree: string; user: string; multiOut: string; multiDev: string; self: string; ca: string; single: string };
  /** Every output above (their closure is these paths). */
  all: string[];
}

/** Instantiates and builds the fixtures (a no-op after the first run on a machine). */
export async function buildFixtures(dir: string): Promise<Fixtures> {
  const exprFile = join(dir, 'fixtures.nix');
  writeFileSync(exprFile, FIXTURE_EXPR);
  const names = ['tree', 'user', 'multi', 'self', 'ca', 'single'] as const;
  const drvList = await runNixLines('nix-instantiate', [exprFile, ...names.flatMap((n) => ['-A', n])]);
  const drvs = Object.fromEntries(names.map((n, i) => [n, drvList[i]!])) as Fixtures['drvs'];
  await runNix('nix-store', ['--realise', ...drvList]);
  const out = async (drv: string) => runNixLines('nix-store', ['--query', '--outputs', drv]);
  const [multiA, multiB] = await out(drvs.multi);
  const [multiDev, multiOut] = multiA!.endsWith('-dev') ? [multiA!, multiB!] : [multiB!, multiA!];
  // A CA output's path is only known from the realisation: ask the store for the built output.
  const caOut = (await runNixLines('nix-store', ['--realise', drvs.ca]))[0]!;
  const paths = {
    tree: (await out(drvs.tree))[0]!,
    user: (await out(drvs.user))[0]!,
    multiOut,
    multiDev,
    self: (await out(drvs.self))[0]!,
    ca: caOut,
    single: (await out(drvs.single))[0]!,
  };
  return { exprFile, drvs, paths, all: Object.values(paths) };
}

/** A key pair made by Nix itself (so the key files are in Nix's format). */
export async function generateKey(dir: string, name: string): Promise<{ secretFile: string; publicKey: string }> {
  const secretFile = join(dir, `${name}.sk`);
  const publicFile = join(dir, `${name}.pk`);
  await runNix('nix-store', ['--generate-binary-cache-key', name, secretFile, publicFile]);
  return { secretFile, publicKey: readFileSync(publicFile, 'utf8').trim() };
}

/** Config lines for a Nix that accepts only paths signed by `publicKey`. */
export function trusting(publicKey: string): string {
  return `require-sigs = true\ntrusted-public-keys = ${publicKey}`;
}

/** `nix copy --from file://<cache> --to <root>`; stderr on failure via NixCommandError. */
export function copyFromCache(cacheDir: string, root: string, paths: string[], publicKey: string): Promise<unknown> {
  return runNix('nix', ['copy', '--from', `file://${cacheDir}`, '--to', root, ...paths], { extraConfig: trusting(publicKey) });
}

export async function failureOf(p: Promise<unknown>): Promise<NixCommandError> {
  try {
    await p;
  } catch (e) {
    if (e instanceof NixCommandError) return e;
    throw e;
  }
  throw new Error('expected the Nix command to fail');
}

/** Each file under `dir` (relative path) with its mtime in ns. */
export function snapshot(dir: string): Map<string, bigint> {
  const out = new Map<string, bigint>();
  const walk = (d: string) => {
    for (const e of readdirSync(d, { withFileTypes: true })) {
      const p = join(d, e.name);
      if (e.isDirectory()) walk(p);
      else out.set(relative(dir, p), statSync(p, { bigint: true }).mtimeNs);
    }
  };
  walk(dir);
  return out;
}

const DECOMPRESS: Record<CacheCompression, string[] | null> = {
  xz: ['xz', '-d', '-c'],
  bzip2: ['bzip2', '-d', '-c'],
  zstd: ['zstd', '-d', '-c', '-q'],
  br: ['brotli', '-d', '-c'],
  none: null,
};

/** Decompresses a file with the reference command-line tool. */
export async function decompressFile(file: string, method: CacheCompression): Promise<Buffer> {
  const argv = DECOMPRESS[method];
  if (!argv) return readFileSync(file);
  const { stdout } = await promisify(execFile)(argv[0]!, [...argv.slice(1), file], { encoding: 'buffer', maxBuffer: 1 << 28 });
  return stdout;
}

/** A narinfo as a field → values map (Sig may repeat). */
export function narInfoFields(text: string): Map<string, string[]> {
  const m = new Map<string, string[]>();
  for (const line of text.split('\n').filter(Boolean)) {
    const i = line.indexOf(': ');
    const k = i < 0 ? line.replace(/:$/, '') : line.slice(0, i);
    const v = i < 0 ? '' : line.slice(i + 2);
    m.set(k, [...(m.get(k) ?? []), v]);
  }
  return m;
}

export function fieldOrder(text: string): string[] {
  return text.split('\n').filter(Boolean).map((l) => l.slice(0, l.indexOf(':')));
}

/** Nix's `nix path-info --json` (SRI hashes, full paths). */
export interface NixPathInfo {
  path: string;
  narHash: string;
  narSize: number;
  references: string[];
  deriver?: string;
  ca?: string;
}

export async function nixPathInfo(paths: string[], store?: string): Promise<Map<string, NixPathInfo>> {
  const { stdout } = await runNix('nix', ['path-info', '--json', ...(store ? ['--store', store] : []), ...paths]);
  return new Map((JSON.parse(stdout.toString('utf8')) as NixPathInfo[]).map((i) => [i.path, i]));
}
