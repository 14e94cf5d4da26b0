import { readFile } from 'node:fs/promises';
import { NixFormatError } from '../errors/index.ts';
import { Batcher } from '../util/batcher.ts';
import { parseDerivation } from './derivation.ts';
import { summarizeDerivation, type DerivationSummary } from './derivation-summary.ts';
import { hostStore } from '../builder/private-store.ts';
import { servePool } from './serve-session.ts';

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

  async readDerivation(drvPath: string): Promise<DerivationSummary> {
    let bytes: Uint8Array;
    try {
      bytes = await readFile(drvPath);
    } catch (err) {
      throw new NixFormatError('derivation', `cannot read ${drvPath}: ${(err as NodeJS.ErrnoException).code ?? err}`, { cause: err });
    }
    return this.parse(drvPath, bytes);
  }

  async queryValid(paths: readonly string[]): Promise<Set<string>> {
    const flags = await Promise.all(paths.map((p) => this.validity.load(p)));
    return new Set(paths.filter((_, i) => flags[i]));
  }
}
