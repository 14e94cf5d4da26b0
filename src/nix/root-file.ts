import { closeSync, openSync } from 'node:fs';
import { join } from 'node:path';
import { asDiskWriteError } from '../errors/index.ts';
import { makeDirSync } from '../util/make-dir.ts';

/**
 * Makes the GC root `dir/name` the way Hydra registers roots: an empty file
 * named after a store path's base name (Nix's collector takes a regular file
 * in its roots tree whose name is a valid store path as a root). Idempotent:
 * 'a' creates a missing file and never truncates or fails on an existing one.
 * The directory is made when the file cannot be created for its lack, not
 * checked on every call. Synchronous: an open and a close, metadata only,
 * cost less as two system calls than as two trips through libuv's pool.
 */
export function addRootFileSync(dir: string, name: string): void {
  const file = join(dir, name);
  try {
    let fd: number;
    try {
      fd = openSync(file, 'a');
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'ENOENT') throw e;
      makeDirSync(dir);
      fd = openSync(file, 'a');
    }
    closeSync(fd);
  } catch (e) {
    throw asDiskWriteError(e, 'a GC root', file);
  }
}

/** addRootFileSync, as a promise. */
export async function addRootFile(dir: string, name: string): Promise<void> {
  addRootFileSync(dir, name);
}
