import type { DerivationSummary, SchedulerStore } from '../../src/actors/model.ts';
import { NixFormatError } from '../../src/errors/index.ts';

/**
 * An in-memory store of derivation summaries and valid paths, for scheduler
 * scale tests and benchmarks with simulated builders (real builds use
 * LocalNixStore). Builders mark outputs valid as they "build" them, so the
 * store survives a simulated runner restart like a real one would.
 */
export class MemoryStore implements SchedulerStore {
  readonly derivations = new Map<string, DerivationSummary>();
  readonly valid = new Set<string>();

  add(drv: DerivationSummary): void {
    this.derivations.set(drv.drvPath, drv);
  }

  async readDerivation(drvPath: string): Promise<DerivationSummary> {
    const d = this.derivations.get(drvPath);
    if (!d) throw new NixFormatError('derivation', `no such derivation ${drvPath}`);
    return d;
  }

  async queryValid(paths: readonly string[]): Promise<Set<string>> {
    return new Set(paths.filter((p) => this.valid.has(p)));
  }
}
