import { open } from 'node:fs/promises';
import { basename, join } from 'node:path';
import { userInfo } from 'node:os';
import { asDiskWriteError } from '../errors/files.ts';
import { makeDir } from '../util/make-dir.ts';

/** Hydra's default: a per-user directory inside Nix's GC roots. */
export function defaultRootsDir(): string {
  return `/nix/var/nix/gcroots/per-user/${userInfo().username}/hydra-roots`;
}

/**
 * Registers store paths as GC roots the way Hydra does: an empty file named
 * after the path's basename in `rootsDir`. Nix's collector treats a regular
 * file in its roots tree whose name is a valid store path as a root, so the
 * files cost no symlink target and survive the path being replaced. The
 * directory is made when a root cannot be created for its lack, not checked
 * once per step.
 */
export async function addGcRoots(rootsDir: string, paths: readonly string[]): Promise<void> {
  for (const p of paths) {
    const file = join(rootsDir, basename(p));
    // 'a' creates the file if missing and never truncates or fails on an existing root.
    try {
      const fh = await open(file, 'a').catch(async (e: NodeJS.ErrnoException) => {
        if (e.code !== 'ENOENT') throw e;
        await makeDir(rootsDir);
        return open(file, 'a');
      });
      await fh.close();
    } catch (e) {
      throw asDiskWriteError(e, 'a GC root', file);
    }
  }
}
