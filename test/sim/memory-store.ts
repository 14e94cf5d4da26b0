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

  /** Adds a one-output x86_64-linux derivation named `n` needing the `out` of each of `deps`; returns its .drv path. */
  addTrivial(n: string, deps: readonly string[] = []): string {
    const drvPath = `/nix/store/${n.padStart(32, '0')}-${n}.drv`;
    this.add({
      drvPath, system: 'x86_64-linux', requiredFeatures: [], preferLocalBuild: false,
      outputs: [{ name: 'out', path: `/nix/store/${n.padStart(32, '1')}-${n}` }], inputDrvs: new Map(deps.map((p) => [p, ['out']])), isCA: false,
    });
    return drvPath;
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
