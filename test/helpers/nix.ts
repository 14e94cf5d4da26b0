import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { runNix, runNixLines } from '../../src/nix/tools.ts';

export { runNix, runNixLines };

/** Writes a Nix expression to a temp file and instantiates it; returns the .drv paths (one per attribute). */
export async function instantiate(expr: string, attrs: string[] = []): Promise<string[]> {
  const dir = mkdtempSync(join(tmpdir(), 'hydrant-nix-'));
  try {
    const file = join(dir, 'default.nix');
    writeFileSync(file, expr);
    return await runNixLines('nix-instantiate', [file, ...attrs.flatMap((a) => ['-A', a])]);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

/** Realises .drv paths with the local store; returns the output paths. */
export async function realise(drvs: string[]): Promise<string[]> {
  return runNixLines('nix-store', ['--realise', ...drvs]);
}

/**
 * A trivial derivation builder usable in test expressions. Builders run with
 * PATH unset, so only absolute paths to coreutils and /bin/sh work.
 */
export const MK_DRV = `
  mk = { name, script, deps ? [], extra ? {} }: derivation ({
    inherit name;
    system = builtins.currentSystem;
    builder = "/bin/sh";
    args = [ "-c" script ];
    deps = deps;
  } // extra);
`;

/**
 * `ca`, the attributes that make a derivation content-addressed (sha256,
 * recursive), and `mk`, a trivial derivation builder taking them as `extra`
 * (no `deps` attribute, unlike MK_DRV): for the `let` of CA test expressions.
 */
export const CA_MK_DRV = `
  ca = { __contentAddressed = true; outputHashMode = "recursive"; outputHashAlgo = "sha256"; };
  mk = { name, script, extra ? {} }: derivation ({
    inherit name;
    system = builtins.currentSystem;
    builder = "/bin/sh";
    args = [ "-c" script ];
  } // extra);
`;

/**
 * Writes `dir/<name>` (release.nix unless named): the Nix file
 * `{ }: let MK_DRV in { <jobs> }`, `jobs` being bindings that use `mk`.
 * Returns its path.
 */
export function writeRelease(dir: string, jobs: string, name = 'release.nix'): string {
  const file = join(dir, name);
  writeFileSync(file, `{ }: let ${MK_DRV} in {\n${jobs}\n}\n`);
  return file;
}
