import { open, type FileHandle } from 'node:fs/promises';
import { dirname } from 'node:path';
import { DiskWriteError } from '../errors/index.ts';
import { makeDir } from '../util/make-dir.ts';

/**
 * A build log written while its step runs. Chunks are written in order
 * through one file handle; the first failure (a full disk, …) is kept as a
 * DiskWriteError naming the file, reported once to `onError`, and later
 * chunks are dropped. Unlike a write stream, a failing disk never raises an
 * 'error' event that could take the process down.
 */
export class BuildLogWriter {
  readonly #file: Promise<FileHandle | null>;
  #chain: Promise<void>;
  #error: DiskWriteError | null = null;
  #closed: Promise<DiskWriteError | null> | null = null;

  /** `flags`: 'w' starts the log afresh, 'a' continues it. */
  constructor(
    readonly path: string,
    flags: 'w' | 'a',
    private readonly onError: (err: DiskWriteError) => void = () => {},
  ) {
    this.#file = open(path, flags)
      .catch(async (e: NodeJS.ErrnoException) => {
        // The log's directory is made when the log needs it, not checked once per step.
        if (e.code !== 'ENOENT') throw e;
        await makeDir(dirname(path));
        return open(path, flags);
      })
      .catch((e: unknown) => {
        this.#fail(e);
        return null;
      });
    this.#chain = this.#file.then(() => {});
  }

  /** The first failure, if any. */
  get error(): DiskWriteError | null {
    return this.#error;
  }

  /** Appends `chunk` after what came before; resolves once it is written or dropped (never rejects). */
  write(chunk: Uint8Array): Promise<void> {
    if (this.#closed) return this.#chain;
    this.#chain = this.#chain.then(async () => {
      const fh = await this.#file;
      if (fh === null || this.#error) return;
      try {
        // A write may be partial (the disk filled in its middle): the rest goes again and gets the error.
        for (let off = 0; off < chunk.length; ) off += (await fh.write(chunk, off)).bytesWritten;
      } catch (e) {
        this.#fail(e);
      }
    });
    return this.#chain;
  }

  /** Waits for pending writes and closes the file; returns the first failure, if any. */
  close(): Promise<DiskWriteError | null> {
    this.#closed ??= (async () => {
      await this.#chain;
      const fh = await this.#file;
      // close(2) can report a write the kernel deferred.
      await fh?.close().catch((e: unknown) => this.#fail(e));
      return this.#error;
    })();
    return this.#closed;
  }

  #fail(e: unknown): void {
    if (this.#error) return;
    this.#error = new DiskWriteError('the build log', this.path, e);
    this.onError(this.#error);
  }
}
