/** Nix expressions shared by several test files in test/nix. */
import { readFileSync } from 'node:fs';
import { type Derivation, parseDerivation } from '../../src/nix/derivation.ts';
import { instantiate, MK_DRV, runNixLines } from '../helpers/nix.ts';

/** Test derivations covering every output kind and every escape. Names start with "dt-". */
export const DRV_EXPR = `
let ${MK_DRV}
  ca = { __contentAddressed = true; outputHashMode = "recursive"; outputHashAlgo = "sha256"; };
  ctl = builtins.fromJSON "\\"ctl\\\\u0001\\\\u001f\\\\u007f end\\"";
in rec {
  multi = mk { name = "dt-multi"; script = "echo a > $out; echo b > $dev; echo c > $doc"; extra = { outputs = [ "out" "dev" "doc" ]; }; };
  fodFlat = mk { name = "dt-fod-flat"; script = "printf hello > $out"; extra = {
    outputHashMode = "flat"; outputHashAlgo = "sha256"; outputHash = builtins.hashString "sha256" "hello"; }; };
  fodRec = mk { name = "dt-fod-rec"; script = "/bin/mkdir $out"; extra = {
    outputHashMode = "recursive"; outputHash = "sha256-" + "LPJNul+wow4m6DsqxbninhsWHlwfp0JecwQzYpOLmCQ="; }; };
  fodSha1 = mk { name = "dt-fod-sha1"; script = "printf x > $out"; extra = {
    outputHashAlgo = "sha1"; outputHash = builtins.hashString "sha1" "x"; }; };
  fodSha512 = mk { name = "dt-fod-sha512"; script = "printf y > $out"; extra = {
    outputHashMode = "recursive"; outputHashAlgo = "sha512"; outputHash = builtins.hashString "sha512" "y"; }; };
  caOut = mk { name = "dt-ca"; script = "echo \${multi.dev} > $out"; deps = [ multi ]; extra = ca; };
  caOnCa = mk { name = "dt-ca-on-ca"; script = "echo \${caOut} > $out"; deps = [ caOut ]; extra = ca // { outputs = [ "out" "lib" ]; }; };
  structured = mk { name = "dt-structured"; script = "echo hi > $out"; deps = [ fodFlat ]; extra = {
    __structuredAttrs = true; requiredSystemFeatures = [ "kvm" "dt-feature" ]; preferLocalBuild = true;
    allowSubstitutes = false; nested = { list = [ 1 "two" { three = 3.5; } ]; }; src = ./default.nix; }; };
  structuredDeferred = mk { name = "dt-structured-deferred"; script = "echo hi > $out"; deps = [ caOut fodFlat ];
    extra = { __structuredAttrs = true; requiredSystemFeatures = [ "big" ]; }; };
  escapes = mk { name = "dt-escapes"; script = "echo 'q\\"b\\\\n\\nr\\rt\\t' > $out"; extra = {
    weird = "a\\"b\\\\c\\nd\\re\\tf\\$x \${ctl}"; unicode = "héllo ✓ 🚀 \\u{1F680}";
    "odd key" = "v"; empty = ""; requiredSystemFeatures = "kvm   dt-feature\\tbig"; preferLocalBuild = true; }; };
  oddSystem = derivation { name = "dt-odd-system"; system = "x86_64-linux\\nwith\\ttabs"; builder = "/bin/sh"; args = [ "-c" "true" ]; };
  top = mk { name = "dt-top"; script = "/bin/cat \${builtins.toFile "dt-src.txt" "x"} > $out";
    deps = [ multi.dev multi.doc fodFlat fodRec fodSha1 fodSha512 escapes structured ]; };
  deferred = mk { name = "dt-deferred"; script = "echo \${caOnCa.lib} > $out"; deps = [ caOnCa.lib top ]; };
}`;

export const DRV_ATTRS = ['multi', 'fodFlat', 'fodRec', 'fodSha1', 'fodSha512', 'caOut', 'caOnCa', 'structured', 'structuredDeferred', 'escapes', 'oddSystem', 'top', 'deferred'] as const;
export type DrvAttr = (typeof DRV_ATTRS)[number];

export interface DrvFixtures {
  drvPath: Map<DrvAttr, string>;
  /** Every .drv in the closure of DRV_EXPR's attributes: its bytes and parsed form. */
  drvs: Map<string, { bytes: Buffer; drv: Derivation }>;
}

/** Instantiates DRV_EXPR (no building) and reads the whole .drv closure. */
export async function instantiateDrvFixtures(): Promise<DrvFixtures> {
  const paths = await instantiate(DRV_EXPR, [...DRV_ATTRS]);
  const drvPath = new Map(DRV_ATTRS.map((a, i) => [a, paths[i]!] as const));
  const closure = (await runNixLines('nix-store', ['--query', '--requisites', ...paths])).filter((p) => p.endsWith('.drv'));
  const drvs = new Map<string, { bytes: Buffer; drv: Derivation }>();
  for (const p of closure) {
    const bytes = readFileSync(p);
    drvs.set(p, { bytes, drv: parseDerivation(bytes) });
  }
  return { drvPath, drvs };
}
