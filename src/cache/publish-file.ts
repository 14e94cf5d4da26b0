import { randomBytes } from 'node:crypto';
import { closeSync, fdatasync, linkSync, openSync, renameSync, statSync, unlinkSync, writeSync } from 'node:fs';
import { open, unlink } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';
import { asDiskWriteError } from '../errors/files.ts';
import { SMALL_FILE } from '../util/small-file.ts';

/**
 * Write-once, all-or-nothing files. Everything is first written to a hidden
 * temporary file in the target's directory, then hard-linked to its name:
 * link(2) is atomic and, unlike rename(2), fails when the name exists, so a
 * reader sees either nothing or the whole file, and an existing file (perhaps
 * written by another runner) is never replaced.
 *
 * The calls that only touch metadata or copy a few KB into the page cache
 * (open, write, close, link, unlink, stat) are made synchronously
 * (util/small-file.ts says why); what waits for the disk (fdatasync) and
 * bodies larger than SMALL_FILE stay off the main thread.
 */

/** Bodies up to this size are written with synchronous calls (narinfos, listings, most logs). */
export { SMALL_FILE };

/** A fresh hidden name next to `final` (same filesystem, so link/rename work). */
export function tempPathFor(final: string): string {
  return join(dirname(final), `.${basename(final)}.${randomBytes(6).toString('hex')}.tmp`);
}

const NO_HARD_LINKS = new Set(['EPERM', 'ENOTSUP', 'EOPNOTSUPP', 'ENOSYS', 'EXDEV']);

/**
 * Gives the finished file `tmp` the name `final` unless that exists. Returns
 * whether it did; `tmp` is gone afterwards either way. Synchronous: a link
 * and an unlink, metadata only.
 */
export function publishTempSync(tmp: string, final: string): boolean {
  try {
    linkSync(tmp, final);
    return true;
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    if (code === 'EEXIST') return false;
    if (!code || !NO_HARD_LINKS.has(code)) throw asDiskWriteError(e, 'a binary cache file', final);
    // Filesystems without hard links: rename, after checking (a tiny race, but still atomic for readers).
    if (statSync(final, { throwIfNoEntry: false })) return false;
    renameSync(tmp, final);
    return true;
  } finally {
    try {
      unlinkSync(tmp);
    } catch {
      // gone already (renamed), or left for the cache's GC of temporary files
    }
  }
}

/** publishTempSync, as a promise (the CacheStorage interface is asynchronous). */
export async function publishTemp(tmp: string, final: string): Promise<boolean> {
  return publishTempSync(tmp, final);
}

/** fdatasync(2) on libuv's thread pool: the one call per file that waits for the disk. */
function datasync(fd: number): Promise<void> {
  return new Promise((resolve, reject) => fdatasync(fd, (e) => (e ? reject(e) : resolve())));
}

/** Writes all of `data` at the file's offset (a write may be partial). */
function writeAllSync(fd: number, data: Uint8Array): void {
  for (let off = 0; off < data.length; ) off += writeSync(fd, data, off, data.length - off);
}

/** Writes `data` to `final` atomically, unless `final` exists; returns whether it wrote. */
export async function writeOnce(final: string, data: Uint8Array | string, options: { fsync?: boolean } = {}): Promise<boolean> {
  const bytes = typeof data === 'string' ? Buffer.from(data) : data;
  const fsync = options.fsync ?? true;
  if (bytes.length > SMALL_FILE) return writeOnceLarge(final, bytes, fsync);
  const tmp = tempPathFor(final);
  try {
    const fd = openSync(tmp, 'wx', 0o644);
    try {
      writeAllSync(fd, bytes);
      // The data is on disk before the name can point at it: a crash never leaves a published name over lost data.
      if (fsync) await datasync(fd);
    } finally {
      closeSync(fd);
    }
  } catch (e) {
    try {
      unlinkSync(tmp);
    } catch {
      // never created
    }
    throw asDiskWriteError(e, 'a binary cache file', final);
  }
  return publishTempSync(tmp, final);
}

/** writeOnce of a body too large to copy on the main thread: the file's calls on the thread pool. */
async function writeOnceLarge(final: string, data: Uint8Array, fsync: boolean): Promise<boolean> {
  const tmp = tempPathFor(final);
  try {
    // One handle for writing and flushing.
    const fh = await open(tmp, 'wx', 0o644);
    try {
      await fh.writeFile(data);
      if (fsync) await fh.datasync();
    } finally {
      await fh.close();
    }
  } catch (e) {
    await unlink(tmp).catch(() => {});
    throw asDiskWriteError(e, 'a binary cache file', final);
  }
  return publishTempSync(tmp, final);
}

/** Whether `path` exists: one synchronous stat(2), no error object for a missing file. */
export function existsSync(path: string): boolean {
  return statSync(path, { throwIfNoEntry: false }) !== undefined;
}
