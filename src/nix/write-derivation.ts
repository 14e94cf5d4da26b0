/**
 * Writing a derivation into a Nix store the way Nix's writeDerivation does:
 * a text path (`text:sha256:…` content address) named `<name>.drv` whose
 * references are its input sources and input derivations.
 *
 * Nix 2.8 has no command that adds a .drv (`nix derivation add` came later),
 * `nix-store --add` sets no references, and `nix-store --import` registers
 * no content address. `builtins.toFile` does exactly what writeDerivation
 * does (addTextToStore with the string's context as references), so the
 * .drv's ATerm is read from a file and given the references as the string
 * context of empty substrings of `builtins.storePath` of each one. The
 * evaluation must run with `--read-write-mode`: `nix-instantiate --eval`
 * alone only computes the path.
 */
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { NixFormatError } from '../errors/index.ts';
import { derivationStorePath } from './derivation-paths.ts';
import { type Derivation, derivationReferences, serializeDerivation } from './derivation.ts';
import type { NixStoreHandle } from './private-store.ts';
import { parseStorePath, STORE_DIR, storePathNameError } from './store-path.ts';

const EXPR = `{ name, file, refs }:
  let refList = builtins.filter (r: builtins.isString r && r != "") (builtins.split " " refs);
  in builtins.toFile name (builtins.readFile file
    + builtins.concatStringsSep "" (map (r: builtins.substring 0 0 "\${builtins.storePath r}") refList))`;

/**
 * Adds `drv` to `store` as `<name>.drv` and returns its path (computed
 * beforehand, and checked against the one Nix reports). A no-op when the
 * path is already valid. Every reference must be valid in `store`.
 * The path is not rooted: register a root for it first (resolved-roots.ts)
 * so that a collection cannot remove it between this call and its use.
 */
export async function writeDerivationToStore(store: NixStoreHandle, drv: Derivation, name: string): Promise<string> {
  const nameErr = storePathNameError(`${name}.drv`);
  if (nameErr) throw new NixFormatError('derivation', `cannot write a derivation named '${name}': ${nameErr}`);
  const expected = derivationStorePath(drv, name, STORE_DIR);
  const refs = derivationReferences(drv);
  for (const r of refs) parseStorePath(r);
  const dir = await mkdtemp(join(tmpdir(), 'hydrant-drv-'));
  try {
    const file = join(dir, 'drv');
    await writeFile(file, serializeDerivation(drv));
    const { stdout } = await store.runChecked('nix-instantiate', [
      '--eval',
      '--read-write-mode',
      '--expr',
      EXPR,
      '--argstr',
      'name',
      `${name}.drv`,
      '--argstr',
      'file',
      file,
      '--argstr',
      'refs',
      refs.join(' '),
    ]);
    const written = JSON.parse(stdout.toString('utf8').trim()) as unknown;
    if (written !== expected) {
      throw new NixFormatError('derivation', `Nix wrote ${String(written)} where ${expected} was computed for ${name}.drv`);
    }
    return expected;
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}
