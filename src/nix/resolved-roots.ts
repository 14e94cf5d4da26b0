/**
 * GC roots for resolved derivations. A resolved .drv is written by the
 * runner, so neither the evaluator's roots nor the roots of Builds.drvPath
 * keep it; without one of its own, a collection between resolution and
 * dispatch (or a retry) removes it.
 *
 * The roots are empty files named after the .drv's base name, as Hydra
 * registers output roots, in a directory of their own beside Hydra's roots
 * directory: Nix's collector scans the whole gcroots tree (a regular file
 * named like a valid store path is a root), while hydra-update-gc-roots
 * deletes, from its own directory, day-old roots of paths no build lists,
 * which a resolved .drv of a long queue would be.
 */
import { readdir, unlink } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { addRootFile } from './root-file.ts';
import { parseDerivationPath, STORE_DIR } from './store-path.ts';

/** `<parent of rootsDir>/hydrant-resolved-roots`, beside Hydra's `hydra-roots`. */
export function resolvedRootsDir(rootsDir: string): string {
  return join(dirname(rootsDir), 'hydrant-resolved-roots');
}

/**
 * Roots `drvPath` (idempotent). Call it before the .drv is written: a root
 * file for a path not yet valid is harmless, and the path is never unrooted.
 */
export async function addResolvedDrvRoot(dir: string, drvPath: string): Promise<void> {
  await addRootFile(dir, parseDerivationPath(drvPath).baseName);
}

/** Drops the root of `drvPath` once no step needs it (idempotent). */
export async function removeResolvedDrvRoot(dir: string, drvPath: string): Promise<void> {
  await unlink(join(dir, parseDerivationPath(drvPath).baseName)).catch((e: NodeJS.ErrnoException) => {
    if (e.code !== 'ENOENT') throw e;
  });
}

/** The .drv paths rooted in `dir` (none when it does not exist): what a restart reconciles with its steps. */
export async function listResolvedDrvRoots(dir: string): Promise<string[]> {
  const names = await readdir(dir).catch((e: NodeJS.ErrnoException) => {
    if (e.code === 'ENOENT') return [] as string[];
    throw e;
  });
  const out: string[] = [];
  for (const n of names.sort()) {
    try {
      out.push(parseDerivationPath(`${STORE_DIR}/${n}`).path);
    } catch {
      // not a root of ours
    }
  }
  return out;
}
