import type { StepRecord } from '../../src/actors/model.ts';
import type { Prepared, StepPreparer } from '../../src/actors/prepare-step.ts';
import type { SchedulerDb } from '../../src/db/scheduler-db-interface.ts';
import type { MemoryStore } from './memory-store.ts';

/**
 * The simulated counterpart of CaResolver for tests with a MemoryStore (no
 * Nix): a floating content-addressed step with input derivations resolves,
 * once its CA inputs' outputs are in the rows (SchedulerDb.realisedOutputs,
 * the real query), to a resolved derivation named after it — the same for
 * every build, as a real resolution is — which is "written" by adding it to
 * the MemoryStore. A CA derivation without inputs that a step built before
 * answers `built` (its outputs from the rows); a resolved derivation whose
 * step failed before answers `failedBefore`, as CaResolver does. The resolved one's outputs are known when a step built it before (the
 * rows again, and valid in the store): then it answers `built`. The rows,
 * the graph move and the crash safety are the scheduler's, under test.
 */
export class SimulatedResolver implements StepPreparer {
  /** Resolutions made; steps that fell back to being built unresolved (an input output not recorded). */
  resolved = 0;
  unresolvable = 0;

  constructor(private readonly o: { store: MemoryStore; db: Pick<SchedulerDb, 'realisedOutputs' | 'failedBefore'> }) {}

  /** The resolved derivation of `drvPath` (a floating CA one with inputs). */
  static resolvedPath(drvPath: string): string {
    return `${drvPath.slice(0, -4)}-resolved.drv`;
  }

  prepare(step: StepRecord): Prepared | Promise<Prepared> {
    if (!step.outputs.some((o) => o.path === null)) return 'dispatch';
    return this.resolve(step);
  }

  private async resolve(step: StepRecord): Promise<Prepared> {
    const drv = await this.o.store.readDerivation(step.drvPath);
    if (drv.inputDrvs.size === 0) return this.builtBefore(step.drvPath);
    // Every CA input's output must be recorded, as CaResolver needs it.
    const caInputs: string[] = [];
    for (const p of drv.inputDrvs.keys()) if ((await this.o.store.readDerivation(p)).outputs.some((o) => o.path === null)) caInputs.push(p);
    const known = new Set((await this.o.db.realisedOutputs(caInputs)).map((k) => k.drvPath));
    if (caInputs.some((p) => !known.has(p))) {
      this.unresolvable++;
      throw new Error(`an input of ${step.drvPath} has no recorded output`);
    }
    const drvPath = SimulatedResolver.resolvedPath(step.drvPath);
    // The store write (CaResolver's writeDerivationToStore): idempotent, as it is.
    this.o.store.add({ ...drv, drvPath, inputDrvs: new Map() });
    this.resolved++;
    const declared = drv.outputs.map((o) => ({ name: o.name, path: null }));
    if (await this.o.db.failedBefore(drvPath)) return { kind: 'resolved', drvPath, outputs: declared, built: false, failedBefore: true };
    const rows = new Map((await this.o.db.realisedOutputs([drvPath])).map((k) => [k.name, k.path]));
    const paths = declared.map((o) => rows.get(o.name));
    const built = paths.every((p) => p !== undefined) && (await this.o.store.queryValid(paths as string[])).size === paths.length;
    return { kind: 'resolved', drvPath, outputs: built ? declared.map((o, i) => ({ name: o.name, path: paths[i]! })) : declared, built };
  }

  /** A floating CA derivation without inputs that a step built before (rows, valid outputs) is not built again. */
  private async builtBefore(drvPath: string): Promise<Prepared> {
    const rows = await this.o.db.realisedOutputs([drvPath]);
    if (rows.length === 0 || (await this.o.store.queryValid(rows.map((r) => r.path))).size !== rows.length) return 'dispatch';
    return { kind: 'built', outputs: rows.map((r) => ({ name: r.name, path: r.path })) };
  }
}
