import { open } from 'node:fs/promises';
import { join } from 'node:path';
import { asDiskWriteError } from '../errors/index.ts';
import { makeDir } from '../util/make-dir.ts';

/**
 * Makes the GC root `dir/name` the way Hydra registers roots: an empty file
 * named after a store path's base name (Nix's collector takes a regular file
 * in its roots tree whose name is a valid store path as a root). Idempotent:
 * 'a' creates a missing file and never truncates or fails on an existing one.
 * The directory is made when the file cannot be created for its lack, not
 * checked on every call.
 */
export async function addRootFile(dir: string, name: string): Promise<void> {
  const file = join(dir, name);
  try {
    const fh = await open(file, 'a').catch(async (e: NodeJS.ErrnoException) => {
      if (e.code !== 'ENOENT') throw e;
      await makeDir(dir);
      return open(file, 'a');
    });
    await fh.close();
  } catch (e) {
    throw asDiskWriteError(e, 'a GC root', file);
  }
}
