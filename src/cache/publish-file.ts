import { randomBytes } from 'node:crypto';
import { link, open, rename, stat, unlink } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';
import { asDiskWriteError } from '../errors/files.ts';

/**
 * Write-once, all-or-nothing files. Everything is first written to a hidden
 * temporary file in the target's directory, then hard-linked to its name:
 * link(2) is atomic and, unlike rename(2), fails when the name exists, so a
 * reader sees either nothing or the whole file, and an existing file (perhaps
 * written by another runner) is never replaced.
 */

/** A fresh hidden name next to `final` (same filesystem, so link/rename work). */
export function tempPathFor(final: string): string {
  return join(dirname(final), `.${basename(final)}.${randomBytes(6).toString('hex')}.tmp`);
}

/** Flushes a finished file to disk, so that a crash cannot leave a published name over missing data. */
export async function syncFile(path: string): Promise<void> {
  const fh = await open(path, 'r');
  try {
    await fh.datasync();
  } finally {
    await fh.close();
  }
}

const NO_HARD_LINKS = new Set(['EPERM', 'ENOTSUP', 'EOPNOTSUPP', 'ENOSYS', 'EXDEV']);

/**
 * Gives the finished file `tmp` the name `final` unless that exists. Returns
 * whether it did; `tmp` is gone afterwards either way.
 */
export async function publishTemp(tmp: string, final: string): Promise<boolean> {
  try {
    await link(tmp, final);
    return true;
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    if (code === 'EEXIST') return false;
    if (!code || !NO_HARD_LINKS.has(code)) throw asDiskWriteError(e, 'a binary cache file', final);
    // Filesystems without hard links: rename, after checking (a tiny race, but still atomic for readers).
    if (await exists(final)) return false;
    await rename(tmp, final);
    return true;
  } finally {
    await unlink(tmp).catch(() => {});
  }
}

/** Writes `data` to `final` atomically, unless `final` exists; returns whether it wrote. */
export async function writeOnce(final: string, data: Uint8Array | string, options: { fsync?: boolean } = {}): Promise<boolean> {
  const tmp = tempPathFor(final);
  try {
    // One handle for writing and flushing.
    const fh = await open(tmp, 'wx', 0o644);
    try {
      await fh.writeFile(data);
      if (options.fsync ?? true) await fh.datasync();
    } finally {
      await fh.close();
    }
  } catch (e) {
    await unlink(tmp).catch(() => {});
    throw asDiskWriteError(e, 'a binary cache file', final);
  }
  return publishTemp(tmp, final);
}

export async function exists(path: string): Promise<boolean> {
  try {
    await stat(path);
    return true;
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return false;
    throw e;
  }
}
