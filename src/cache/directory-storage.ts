import { renameSync, unlinkSync } from 'node:fs';
import { mkdir, readdir, readFile, stat, unlink } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { asDiskWriteError, DiskWriteError } from '../errors/files.ts';
import { makeDir } from '../util/make-dir.ts';
import { existsSync, publishTempSync, tempPathFor, writeOnce } from './publish-file.ts';
import type { CacheStorage, PutBody, PutOptions, StoredEntry, StoredObject, TempFileOptions } from './storage.ts';

export interface DirectoryStorageOptions {
  /** fsync each file before giving it its name (default true). */
  fsync?: boolean;
  /** Subdirectories made at open (Nix makes nar/, log/, realisations/ when it opens a file:// cache). */
  dirs?: readonly string[];
}

/**
 * Objects as files under a directory (`file://` caches). Each file is written
 * to a hidden temporary sibling and hard-linked to its name (publish-file.ts),
 * so readers see all of it or nothing and an existing file is never
 * replaced; a body named by its own bytes (`sameBytes`: a NAR) is renamed
 * into place instead, as an existing file of that name holds the same bytes.
 * Content types and encodings are not recorded: a web server in front of the
 * directory derives them from the names, as for Nix's own. Metadata calls
 * (stat, link, rename, unlink) and small bodies are synchronous
 * (publish-file.ts): the cache is meant to be a local disk.
 */
export class DirectoryStorage implements CacheStorage {
  private readonly fsync: boolean;
  /**
   * Directories this storage made or found, so that preparing a body does
   * not make its directory again for every object (a mkdir, failing with
   * EEXIST, per NAR). Bounded: the keys of a cache fall in a few directories.
   */
  private readonly madeDirs = new Set<string>();
  private static readonly MADE_DIRS_MAX = 1024;

  private constructor(
    readonly root: string,
    options: DirectoryStorageOptions,
  ) {
    this.fsync = options.fsync ?? true;
    for (const d of ['', ...(options.dirs ?? [])]) this.madeDirs.add(join(root, d));
  }

  static async open(root: string, options: DirectoryStorageOptions = {}): Promise<DirectoryStorage> {
    for (const d of ['', ...(options.dirs ?? [])]) {
      await mkdir(join(root, d), { recursive: true }).catch((e: unknown) => {
        throw asDiskWriteError(e, 'a binary cache directory', join(root, d, '.'));
      });
    }
    return new DirectoryStorage(root, options);
  }

  get syncTempFiles(): boolean {
    return this.fsync;
  }

  get location(): string {
    return this.root;
  }

  private file(key: string): string {
    return join(this.root, key);
  }

  async has(key: string): Promise<boolean> {
    return existsSync(this.file(key));
  }

  async get(key: string): Promise<StoredObject | null> {
    try {
      return { body: await readFile(this.file(key)), contentEncoding: undefined };
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'ENOENT') return null;
      throw e;
    }
  }

  async put(key: string, body: PutBody, options?: PutOptions): Promise<boolean> {
    const final = this.file(key);
    if (typeof body === 'object' && 'file' in body) {
      // A body prepared at tempFile(key) is a sibling of its name: linking it is the whole upload.
      if (!options?.sameBytes) return publishTempSync(body.file, final);
      // Named by its own bytes: an existing file is this very content, so one
      // rename (atomic for readers) replaces the link, check and unlink.
      try {
        renameSync(body.file, final);
        return true;
      } catch (e) {
        try {
          unlinkSync(body.file);
        } catch {
          // gone already
        }
        throw asDiskWriteError(e, 'a binary cache file', final);
      }
    }
    try {
      return await writeOnce(final, body, { fsync: this.fsync });
    } catch (e) {
      // The key's directory is new (the cache's own directories exist from open).
      if (!(e instanceof DiskWriteError && e.errno === 'ENOENT')) throw e;
      await makeDir(dirname(final));
      return writeOnce(final, body, { fsync: this.fsync });
    }
  }

  async tempFile(key: string, options: TempFileOptions = {}): Promise<string> {
    const final = this.file(key);
    const dir = dirname(final);
    if (options.remakeDir || !this.madeDirs.has(dir)) {
      await makeDir(dir);
      if (this.madeDirs.size >= DirectoryStorage.MADE_DIRS_MAX) this.madeDirs.clear();
      this.madeDirs.add(dir);
    }
    return tempPathFor(final);
  }

  async *list(prefix: string): AsyncIterable<StoredEntry> {
    // Walk only the directory the prefix names, then filter by the rest.
    const slash = prefix.lastIndexOf('/');
    const start = slash < 0 ? '' : prefix.slice(0, slash + 1);
    const walk = async function* (this: DirectoryStorage, rel: string): AsyncGenerator<StoredEntry> {
      let entries;
      try {
        entries = await readdir(this.file(rel), { withFileTypes: true });
      } catch (e) {
        if ((e as NodeJS.ErrnoException).code === 'ENOENT') return;
        throw e;
      }
      for (const e of entries.sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0))) {
        // Hidden names are temporary files of writes in progress.
        if (e.name.startsWith('.')) continue;
        const key = rel + e.name;
        if (e.isDirectory()) {
          if (prefix.startsWith(`${key}/`) || key.startsWith(prefix)) yield* walk.call(this, `${key}/`);
        } else if (key.startsWith(prefix)) {
          const st = await stat(this.file(key)).catch(() => null);
          if (st) yield { key, size: st.size, modified: st.mtime };
        }
      }
    };
    yield* walk.call(this, start);
  }

  async delete(key: string): Promise<void> {
    await unlink(this.file(key)).catch((e: NodeJS.ErrnoException) => {
      if (e.code !== 'ENOENT') throw e;
    });
  }

  async close(): Promise<void> {}
}
