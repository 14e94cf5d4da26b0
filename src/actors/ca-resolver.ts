import { readFile } from 'node:fs/promises';
import type { Logger } from '../util/logger.ts';
import type { SchedulerDb } from '../db/scheduler-db-interface.ts';
import { derivationStorePath } from '../nix/derivation-paths.ts';
import { type Derivation, derivationName, derivationType } from '../nix/derivation.ts';
import type { NixStoreHandle } from '../nix/private-store.ts';
import { addResolvedDrvRoot, listResolvedDrvRoots, removeResolvedDrvRoot } from '../nix/resolved-roots.ts';
import { mustResolve, realisedKey } from '../nix/resolve-derivation.ts';
import { storeRealisations } from '../nix/store-realisations.ts';
import { writeDerivationToStore } from '../nix/write-derivation.ts';
import type { WorkerPool } from '../workers/pool.ts';
import type { SchedulerStore, StepOutput, StepRecord } from './model.ts';
import type { Prepared, StepPreparer } from './prepare-step.ts';
import type { CaRealisations } from './ca-realisations.ts';
import type { Realisation } from '../nix/realisation.ts';

export interface CaResolverOptions {
  pool: WorkerPool;
  /** The runner's store: the .drv files are read from it and resolved ones written to it. */
  store: NixStoreHandle;
  /** Output validity, as the scheduler sees it. */
  valid: Pick<SchedulerStore, 'queryValid'>;
  db: Pick<SchedulerDb, 'realisedOutputs' | 'failedBefore'>;
  /** Where the resolved .drv files' GC roots go (resolvedRootsDir). */
  rootsDir: string;
  log: Logger;
  /** Told of every resolution, for the realisations of the originals. */
  realisations?: CaRealisations;
  /** Publishes realisations (to every cache): for a resolved derivation found already built. */
  publish?: (rs: Realisation[]) => Promise<void>;
  /**
   * Roots output paths and puts their closure in every cache (the
   * publisher's `alreadyBuilt`), for outputs found built: throws when a
   * cache cannot take them.
   */
  publishOutputs?: (paths: readonly string[]) => Promise<void>;
}

/**
 * The content-addressed resolution preparer (docs/CA-DERIVATIONS.md): a
 * runnable step whose derivation must be resolved (floating CA, deferred or
 * impure, with input derivations) is resolved on the worker pool from its
 * inputs' realised outputs (their .drv files for input-addressed ones, the
 * steps' rows for content-addressed ones), and the resolved .drv is rooted,
 * then written into the runner's store. Every other step is dispatched at
 * once, synchronously. The root goes when the graph releases the resolved
 * step (or at once when its outputs already exist).
 */
export class CaResolver implements StepPreparer {
  /** Resolved .drv paths this runner rooted. */
  private readonly rooted = new Set<string>();

  constructor(private readonly o: CaResolverOptions) {}

  prepare(step: StepRecord): Prepared | Promise<Prepared> {
    // Only a derivation with an output path unknown before building can need resolving.
    if (!step.outputs.some((out) => out.path === null)) return 'dispatch';
    return this.resolve(step);
  }

  /**
   * Startup, before any step is prepared: roots a previous run left (it died
   * before the steps needing them ended) go. A step that still needs its
   * resolved .drv resolves again and roots it again before using it.
   */
  async clearStaleRoots(): Promise<number> {
    let n = 0;
    for (const drvPath of await listResolvedDrvRoots(this.o.rootsDir)) {
      if (this.rooted.has(drvPath)) continue;
      await removeResolvedDrvRoot(this.o.rootsDir, drvPath);
      n++;
    }
    return n;
  }

  released(step: StepRecord): void {
    if (this.rooted.size > 0 && this.rooted.delete(step.drvPath)) {
      this.unroot(step.drvPath);
      this.o.realisations?.forget(step.drvPath);
    }
  }

  private async readDrv(drvPath: string): Promise<Derivation> {
    return this.o.pool.parseDerivation(await readFile(this.o.store.realPath(drvPath)));
  }

  private async resolve(step: StepRecord): Promise<Prepared> {
    const drv = await this.readDrv(step.drvPath);
    if (!mustResolve(drv)) return derivationType(drv) === 'floating' ? this.builtBefore(step) : 'dispatch';
    const realised = await this.realisedInputs(drv);
    const r = await this.o.pool.resolveDerivation(step.drvPath, drv, realised);
    if (!r.changed) return 'dispatch';
    const name = derivationName(drv, step.drvPath);
    const drvPath = derivationStorePath(r.drv, name);
    // Rooted before it is written: never unrooted between its write and its use.
    await addResolvedDrvRoot(this.o.rootsDir, drvPath);
    this.rooted.add(drvPath);
    await writeDerivationToStore(this.o.store, r.drv, name);
    this.o.realisations?.resolvedFrom(drvPath, step.drvPath, realised);
    const declared: StepOutput[] = [...r.drv.outputs].map(([n, out]) => ({ name: n, path: out.path === '' ? null : out.path }));
    if (await this.o.db.failedBefore(drvPath)) {
      // Not built again: the original's builds end as a cached failure, no step needs the .drv.
      if (this.rooted.delete(drvPath)) this.unroot(drvPath);
      this.o.log.debug({ drv: step.drvPath, resolved: drvPath }, 'resolved derivation failed before');
      return { kind: 'resolved', drvPath, outputs: declared, built: false, failedBefore: true };
    }
    let outputs = declared;
    if (outputs.some((out) => out.path === null)) {
      // Floating outputs: known when a step built this resolved derivation before.
      const known = new Map((await this.realised([drvPath])).map((k) => [k.name, k.path]));
      if (outputs.every((out) => out.path !== null || known.has(out.name))) outputs = outputs.map((out) => ({ name: out.name, path: out.path ?? known.get(out.name)! }));
    }
    const paths = outputs.flatMap((out) => (out.path === null ? [] : [out.path]));
    // Found built: published (rooted, closure and realisations in every cache) before any row says so; else built again.
    const built = paths.length === outputs.length && (await this.o.valid.queryValid(paths)).size === paths.length && (await this.publishFound(drvPath, outputs as { name: string; path: string }[]));
    if (built && this.rooted.delete(drvPath)) this.unroot(drvPath);
    this.o.log.debug({ drv: step.drvPath, resolved: drvPath, built }, 'derivation resolved');
    return { kind: 'resolved', drvPath, outputs: built ? outputs : declared, built };
  }

  /**
   * A floating CA derivation built before (a step's rows or the store's
   * realisations name its outputs), its outputs still valid, is not built
   * again: its outputs are rooted and published with their closure and its
   * realisations first, as a substituted step's are.
   */
  private async builtBefore(step: StepRecord): Promise<Prepared> {
    const known = await this.realised([step.drvPath]);
    const paths = step.outputs.map((o) => o.path ?? known.find((k) => k.name === o.name)?.path);
    if (paths.some((p) => p === undefined)) return 'dispatch';
    if ((await this.o.valid.queryValid(paths as string[])).size !== paths.length) return 'dispatch';
    const outputs = step.outputs.map((o, i) => ({ name: o.name, path: paths[i]! }));
    if (!(await this.publishFound(step.drvPath, outputs))) return 'dispatch';
    return { kind: 'built', outputs };
  }

  /**
   * `<input drv>!<output>` → path for every input output: from the input's
   * .drv when its path is fixed there, else as the steps that built it
   * recorded it.
   */
  private async realisedInputs(drv: Derivation): Promise<Map<string, string>> {
    const realised = new Map<string, string>();
    const unknown: string[] = [];
    for (const inputDrv of drv.inputDrvs.keys()) {
      const input = await this.readDrv(inputDrv);
      let floating = false;
      for (const [n, out] of input.outputs) {
        if (out.path !== '') realised.set(realisedKey(inputDrv, n), out.path);
        else floating = true;
      }
      if (floating) unknown.push(inputDrv);
    }
    for (const k of await this.realised(unknown)) realised.set(realisedKey(k.drvPath, k.name), k.path);
    return realised;
  }

  /**
   * The realised outputs of floating CA derivations: as their steps recorded
   * them, else (no row names any output of one) as the runner's store's
   * realisations record them (built or substituted outside Hydra).
   */
  private async realised(drvPaths: readonly string[]): Promise<{ drvPath: string; name: string; path: string }[]> {
    const rows = await this.o.db.realisedOutputs(drvPaths);
    const recorded = new Set(rows.map((k) => k.drvPath));
    const missing = drvPaths.filter((d) => !recorded.has(d));
    const fromStore = await Promise.all(missing.map(async (drvPath) => (await storeRealisations(this.o.store, drvPath)).map((r) => ({ drvPath, ...r }))));
    return [...rows, ...fromStore.flat()];
  }

  /**
   * Outputs of `drvPath` found built (no step will publish them): rooted,
   * their closure put in every cache, then the realisations of `drvPath`
   * and of the originals resolved to it, in that order, so that a cache
   * never names an output it lacks. False when a part fails (a cache away,
   * a full disk): the derivation is built instead, as Hydra's C++ runner
   * builds a step whose outputs it cannot copy to its destination store,
   * and the build's own publishing retries.
   */
  private async publishFound(drvPath: string, outputs: readonly { name: string; path: string }[]): Promise<boolean> {
    const { realisations, publish, publishOutputs } = this.o;
    try {
      await publishOutputs?.(outputs.map((o) => o.path));
      if (realisations && publish) await publish(await realisations.of(drvPath, outputs));
      return true;
    } catch (err) {
      this.o.log.error({ drv: drvPath, outputs: outputs.map((o) => o.path), err: String((err as Error)?.message ?? err) }, 'cannot publish the outputs of a derivation built before; building it');
      return false;
    }
  }

  private unroot(drvPath: string): void {
    removeResolvedDrvRoot(this.o.rootsDir, drvPath).catch((err: unknown) => this.o.log.warn({ drv: drvPath, err: String((err as Error)?.message ?? err) }, 'could not remove a resolved derivation root'));
  }
}
