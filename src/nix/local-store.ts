import { closeSync, constants, fstatSync, openSync } from 'node:fs';
import { NixFormatError, PathNotInStoreError } from '../errors/index.ts';
import { Batcher } from '../util/batcher.ts';
import { readOpenFile } from '../util/small-file.ts';
import { parseDerivation } from './derivation.ts';
import { summarizeDerivation, type DerivationSummary } from './derivation-summary.ts';
import { hostStore } from './private-store.ts';
import { servePool } from './serve-session.ts';
import { parseDerivationPath } from './store-path.ts';

/** Parses .drv bytes; the default parses in-thread, the runner passes its worker pool. */
export type DerivationParser = (drvPath: string, bytes: Uint8Array) => Promise<DerivationSummary>;

export const parseInThread: DerivationParser = async (drvPath, bytes) => summarizeDerivation(drvPath, parseDerivation(bytes));

/**
 * The runner's local Nix store, read through its serve sessions and the
 * filesystem. Validity look-ups from concurrent loads are batched into one
 * query per batch.
 */
export class LocalNixStore {
  private readonly validity = new Batcher<string, boolean>(async (paths) => {
    const valid = new Set(await servePool(hostStore).use((s) => s.queryValid(paths)));
    return new Map(paths.map((p) => [p, valid.has(p)]));
  }, false, 500);

  constructor(private readonly parse: DerivationParser = parseInThread) {}

  /**
   * Reads and parses a .drv. Only a store path ending in .drv is opened, never
   * through a symlink, and only a regular file is read (what Nix writes; a
   * symlink could point anywhere, the runner may run as root, and a FIFO
   * would block). A missing file is PathNotInStoreError; other read errors
   * (EIO, EMFILE, …) pass through.
   */
  async readDerivation(drvPath: string): Promise<DerivationSummary> {
    parseDerivationPath(drvPath);
    let fd: number;
    try {
      // O_NONBLOCK: opening a FIFO must not wait for a writer. Synchronous calls for a small file (util/small-file.ts).
      fd = openSync(drvPath, constants.O_RDONLY | constants.O_NOFOLLOW | constants.O_NONBLOCK);
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code;
      if (code === 'ENOENT') throw new PathNotInStoreError([drvPath]);
      if (code === 'ELOOP') throw new NixFormatError('derivation', `'${drvPath}' is not a regular file`, { cause: err });
      throw err;
    }
    let bytes: Uint8Array;
    try {
      const st = fstatSync(fd);
      if (!st.isFile()) throw new NixFormatError('derivation', `'${drvPath}' is not a regular file`);
      bytes = await readOpenFile(fd, st.size);
    } finally {
      closeSync(fd);
    }
    return this.parse(drvPath, bytes);
  }

  async queryValid(paths: readonly string[]): Promise<Set<string>> {
    const flags = await Promise.all(paths.map((p) => this.validity.load(p)));
    return new Set(paths.filter((_, i) => flags[i]));
  }
}
