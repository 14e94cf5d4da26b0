import { lstat, readdir } from 'node:fs/promises';
import { join } from 'node:path';
import { GcRootsDirError } from '../errors/index.ts';
import { parseStorePathBaseName } from '../nix/store-path.ts';
import { accepts } from '../util/accepts.ts';

/**
 * Hydra's GC roots directory: one entry per root, named by the store path's
 * basename (an empty regular file; Nix's collector treats a regular file in
 * its roots tree as a root of `storeDir/<name>`). Read by `hydrant cache gc`
 * (what is live) and kept by `hydrant gc-roots`.
 */

export interface RootEntry {
  /** The store path's basename (`<hash>-<name>`). */
  name: string;
  /** When the entry was last changed (lstat ctime): Hydra's age of a root. */
  changed: Date;
}

export interface RootsDirListing {
  roots: RootEntry[];
  /** Entries that name no store path (or are directories): reported, never used, never removed. */
  junk: string[];
}

/** Reads the directory; a missing or unreadable one is a GcRootsDirError (never read as "no roots"). */
export async function readRootsDir(dir: string): Promise<RootsDirListing> {
  let names: string[];
  try {
    names = await readdir(dir);
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    const reason = code === 'ENOENT' ? 'does not exist' : code === 'ENOTDIR' ? 'is not a directory' : (e as Error).message;
    throw new GcRootsDirError(dir, reason, { cause: e });
  }
  const roots: RootEntry[] = [];
  const junk: string[] = [];
  for (const name of names.sort()) {
    if (!isRootName(name)) {
      junk.push(name);
      continue;
    }
    const st = await lstat(join(dir, name)).catch(() => null);
    // Gone meanwhile (another updater): not a root any more.
    if (!st) continue;
    if (st.isDirectory()) junk.push(name);
    else roots.push({ name, changed: st.ctime });
  }
  return { roots, junk };
}

export function isRootName(name: string): boolean {
  return accepts(parseStorePathBaseName, name);
}
